"""The recommender's fast DP step (``"output"`` mode) on a small batch of real customers:
per-example gradients from the logit gradient equal autograd's one example at a time, and
the clipped, noised step equals Opacus's hooks mode and a brute-force per-example loop."""

from __future__ import annotations

import pytest
import torch

from models.recommender.features import (
    NextBasketBatch,
    TrainingExamples,
    build_histories,
    collate_examples,
)
from models.recommender.layers import register_grad_samplers
from models.recommender.model import NextBasketRecommender, basket_loss
from models.recommender.protocol import split_next_basket
from privacy.dp import DPTrainingSession

BATCH = 12


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def real_examples(bundled_orders) -> tuple[TrainingExamples, int]:
    """The bundled data's training customers (one example each) and the catalogue size."""
    frame, _ = bundled_orders
    split = split_next_basket(frame)
    return TrainingExamples(build_histories(split.train, split.items), seed=0), len(split.items)


def make_model(items: int, hidden: tuple[int, ...] = (8, 6)) -> NextBasketRecommender:
    """By default two hidden layers (full backpropagation through the MLP); a non-zero item
    bias."""
    torch.manual_seed(0)
    model = NextBasketRecommender(items, hidden=hidden)
    with torch.no_grad():
        model.item_bias.bias.normal_()
    return model


def one_by_one(model: NextBasketRecommender, examples: list) -> dict[str, torch.Tensor]:
    """Reference per-example gradients: one autograd backward pass per example."""
    gradients: dict[str, list[torch.Tensor]] = {name: [] for name, _ in model.named_parameters()}
    for example in examples:
        model.zero_grad()
        basket_loss(model, collate_examples([example])).sum().backward()
        for name, parameter in model.named_parameters():
            gradients[name].append(parameter.grad.clone())
    return {name: torch.stack(rows) for name, rows in gradients.items()}


def flat_norms(gradients: dict) -> torch.Tensor:
    """Per-example norms over all parameters, ``(B,)``."""
    return torch.cat([g.reshape(len(g), -1) for g in gradients.values()], dim=1).norm(dim=1)


def logit_gradient(model: NextBasketRecommender, batch: NextBasketBatch) -> torch.Tensor:
    logits = model(batch)
    losses = basket_loss(lambda _: logits, batch)
    return torch.autograd.grad(losses.sum(), logits)[0]


@pytest.mark.parametrize("hidden", [(), (16,), (8, 6)])
def test_per_example_gradients_from_the_logit_gradient_match_autograd(real_examples, hidden):
    """No hidden layer, the model's one, two: each path of the grad sampler."""
    dataset, items = real_examples
    model = make_model(items, hidden)
    examples = [dataset[i] for i in range(BATCH)]
    batch = collate_examples(examples)
    expected = one_by_one(model, examples)

    logit_grads = logit_gradient(model, batch)
    with torch.no_grad():
        computed = model.per_example_gradients(batch, logit_grads)
    names = {parameter: name for name, parameter in model.named_parameters()}
    assert set(computed) == set(names)  # every parameter, nothing else
    for parameter, gradient in computed.items():
        torch.testing.assert_close(gradient, expected[names[parameter]], atol=1e-5, rtol=1e-4)
    by_name = {names[parameter]: gradient for parameter, gradient in computed.items()}
    torch.testing.assert_close(flat_norms(by_name), flat_norms(expected), atol=1e-5, rtol=1e-5)

    # The MLP's layer inputs came from the forward pass above; recomputed, they agree.
    model(collate_examples(examples[:2]))  # a forward pass on other features
    with torch.no_grad():
        recomputed = model.per_example_gradients(batch, logit_grads)
    for parameter, gradient in recomputed.items():
        torch.testing.assert_close(gradient, computed[parameter], atol=1e-6, rtol=1e-6)


def dp_step(
    items: int, dataset, batch, *, mode: str, sigma: float, max_grad_norm: float
) -> tuple[dict[str, torch.Tensor], int]:
    """One DP-SGD step (SGD, lr 1) of a fresh model: its noised gradient by parameter name,
    and the expected batch size it was averaged by."""
    register_grad_samplers()
    model = make_model(items)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with DPTrainingSession(
        model,
        optimizer,
        dataset,
        batch_size=64,
        noise_multiplier=sigma,
        max_grad_norm=max_grad_norm,
        loss_fn=basket_loss,
        grad_sample_mode=mode,
        output_grad_samples=NextBasketRecommender.per_example_gradients,
        collate_fn=collate_examples,
        seed=3,
    ) as session:
        session.step(batch)
        gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
        return gradients, session.expected_batch_size


def test_output_mode_step_equals_per_example_clipping(real_examples):
    dataset, items = real_examples
    examples = [dataset[i] for i in range(BATCH)]
    batch = collate_examples(examples)
    per_example = one_by_one(make_model(items), examples)
    norms = flat_norms(per_example)
    max_grad_norm = norms.median().item()
    assert (norms < max_grad_norm).sum() >= 3 and (norms > max_grad_norm).sum() >= 3

    # Noiseless: Σ_b min(1, C / ‖g_b‖) g_b over the expected batch size, one example at a time.
    gradients, expected_batch = dp_step(
        items, dataset, batch, mode="output", sigma=0.0, max_grad_norm=max_grad_norm
    )
    clip = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    for name, rows in per_example.items():
        reference = torch.einsum("b,b...->...", clip, rows) / expected_batch
        torch.testing.assert_close(gradients[name], reference, atol=1e-5, rtol=1e-4)

    # Noised with the same generator: the very step Opacus's hooks mode takes.
    output, _ = dp_step(items, dataset, batch, mode="output", sigma=1.0, max_grad_norm=0.5)
    hooks, _ = dp_step(items, dataset, batch, mode="hooks", sigma=1.0, max_grad_norm=0.5)
    for name, gradient in hooks.items():
        torch.testing.assert_close(output[name], gradient, atol=1e-5, rtol=1e-5)
