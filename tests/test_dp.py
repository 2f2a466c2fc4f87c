"""Opacus DP-SGD wiring: trains, clips each example, adds calibrated noise, in every mode.

``"output"`` mode runs here with :func:`grad_samples_one_by_one`, per-example gradients
from the output gradient by one backward pass per example: the session's own mechanics
(output gradient, hand-over to Opacus's optimizer) are checked against the same references
as Opacus's modes; the recommender's fast grad samples have tests of their own."""

import pytest
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import TensorDataset

from privacy.accountants import DPSegment
from privacy.dp import DPTrainingSession
from privacy.planning import opacus_sample_rate, opacus_steps_per_epoch

MODES = ["hooks", "ghost", "output"]


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Tiny models: extra intra-op threads only add synchronisation, badly so on a busy host."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_model(hidden: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2)).to(dtype)


def per_example_cross_entropy(module: nn.Module, batch) -> torch.Tensor:
    features, labels = batch
    return functional.cross_entropy(module(features), labels, reduction="none")


def make_dataset(n: int = 400, seed: int = 1, dtype: torch.dtype = torch.float32) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 8, generator=generator, dtype=dtype)
    labels = (features[:, 0] + 0.5 * features[:, 1] > 0).long()
    return TensorDataset(features, labels)


def grad_samples_one_by_one(
    module: nn.Module, batch, output_grad: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example gradients for ``"output"`` mode, the slow obvious way: example b's
    gradient is the vector-Jacobian product of its own output row with ``output_grad[b]``."""
    inputs = batch[0]
    parameters = list(module.parameters())
    with torch.enable_grad():
        rows = [
            torch.autograd.grad(module(inputs[b : b + 1]), parameters, output_grad[b : b + 1])
            for b in range(len(inputs))
        ]
    return {p: torch.stack([row[i] for row in rows]) for i, p in enumerate(parameters)}


def start(module: nn.Module, dataset, *, mode: str, lr: float = 0.1, **overrides):
    arguments = {
        "batch_size": 40,
        "noise_multiplier": 0.8,
        "max_grad_norm": 1.0,
        "loss_fn": per_example_cross_entropy,
        "grad_sample_mode": mode,
        "output_grad_samples": grad_samples_one_by_one,
        "seed": 7,
    } | overrides
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    return DPTrainingSession(module, optimizer, dataset, **arguments)


def accuracy(module: nn.Module, dataset: TensorDataset) -> float:
    features, labels = dataset.tensors
    with torch.no_grad():
        return (module(features).argmax(dim=1) == labels).float().mean().item()


def flat_parameters(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


@pytest.mark.parametrize("mode", MODES)
def test_dp_training_learns_and_returns_plain_weights(mode: str) -> None:
    dataset = make_dataset()
    module = make_model()
    before = accuracy(module, dataset)
    with start(module, dataset, mode=mode, lr=0.5) as session:
        for _ in range(4):
            session.run_epoch()
        weights = session.state_dict()
        assert session.steps_taken == 4 * session.steps_per_epoch == 40
        assert session.segment() == DPSegment(1 / 10, 0.8, 40)
    after = accuracy(module, dataset)
    assert before < 0.75
    assert after > 0.85

    fresh = make_model(seed=123)
    assert set(weights) == set(fresh.state_dict())  # no "_module." prefixes
    fresh.load_state_dict(weights, strict=True)
    assert accuracy(fresh, dataset) == after


@pytest.mark.parametrize("mode", MODES)
def test_session_reports_the_sample_rate_opacus_really_uses(mode: str) -> None:
    with start(make_model(), make_dataset(930), mode=mode, batch_size=10) as session:
        assert session.sample_rate == opacus_sample_rate(930, 10) == 1 / 93
        # Opacus's sampler draws int(1 / (1 / 93)) = 92 batches per epoch.
        assert session.steps_per_epoch == opacus_steps_per_epoch(930, 10) == 92
        assert session.expected_batch_size == 10
        batch_sizes = [len(batch[0]) for batch in session.data_loader]
        assert len(batch_sizes) == 92
        assert len(set(batch_sizes)) > 3  # Poisson sampling: sizes vary
    with start(make_model(), make_dataset(100), mode=mode, batch_size=32) as session:
        assert session.sample_rate == 1 / 4
        assert session.expected_batch_size == 25  # int(n * q), not B


def test_every_mode_samples_the_same_batches_and_accounts_the_same_segment() -> None:
    """Same seed, same Poisson batches and noise: only the per-example gradients' route
    differs, so the privacy accounting cannot."""
    # n = 461, B = 5: q = 1/93, Opacus draws int(1 / q) = 92 batches, and every mode
    # averages by int(n * q) = 4 of the public cohort size (Opacus's make_private would
    # take int(n / 92) = 5 from the dataset's length).
    dataset = make_dataset(461)
    runs = {}
    for mode in MODES:
        with start(make_model(), dataset, mode=mode, batch_size=5, seed=11) as session:
            batches = [batch[0] for batch in session.data_loader]
            runs[mode] = (batches, session.expected_batch_size, session.steps_per_epoch)
            session.run_epoch()
            assert session.segment() == DPSegment(1 / 93, 0.8, 92)
    reference = runs["hooks"]
    for batches, expected_batch, steps in runs.values():
        assert (expected_batch, steps) == reference[1:] == (4, 92)
        assert all(torch.equal(a, b) for a, b in zip(batches, reference[0], strict=True))


def test_output_mode_adds_the_same_noise_as_opacus_hooks() -> None:
    dataset = make_dataset(200, dtype=torch.float64)
    trained = []
    for mode in ("hooks", "output"):
        module = make_model(dtype=torch.float64)
        with start(module, dataset, mode=mode, noise_multiplier=1.3, max_grad_norm=0.5) as s:
            s.run_epoch()
        trained.append(flat_parameters(module))
    torch.testing.assert_close(trained[1], trained[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_noiseless_dp_step_with_loose_clipping_is_sgd_averaged_by_expected_batch(
    mode: str,
) -> None:
    # Float64 throughout: the checks below are exact up to rounding.
    dataset = make_dataset(100, dtype=torch.float64)
    batch = (dataset.tensors[0][:7], dataset.tensors[1][:7])
    plain = make_model(dtype=torch.float64)
    private = make_model(dtype=torch.float64)
    with start(private, dataset, mode=mode, noise_multiplier=0.0, max_grad_norm=1e6) as session:
        session.step(batch)
        expected_batch = session.expected_batch_size
    assert expected_batch == 33  # n = 100, B = 40: q = 1/3

    # Opacus sums per-example gradients and divides by the expected batch size, not by 7.
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    (per_example_cross_entropy(plain, batch).sum() / expected_batch).backward()
    optimizer.step()
    torch.testing.assert_close(flat_parameters(private), flat_parameters(plain), rtol=0, atol=1e-12)


def clipped_sum_of_gradients(module: nn.Module, batch, max_grad_norm: float) -> torch.Tensor:
    """Reference: each example's gradient by its own backward pass, clipped, then summed."""
    features, labels = batch
    total = torch.zeros_like(flat_parameters(module))
    for i in range(len(labels)):
        module.zero_grad()
        per_example_cross_entropy(module, (features[i : i + 1], labels[i : i + 1])).sum().backward()
        gradient = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
        total += gradient * min(1.0, max_grad_norm / gradient.norm().item())
    return total


@pytest.mark.parametrize("mode", MODES)
def test_clipping_bounds_each_examples_contribution(mode: str) -> None:
    dataset = make_dataset(100, dtype=torch.float64)
    features, labels = dataset.tensors[0][:5].clone(), dataset.tensors[1][:5].clone()
    features[0] *= 1e4  # one example with a huge gradient
    batch = (features, labels)
    lr, max_grad_norm = 0.1, 1.5

    reference = make_model(dtype=torch.float64)
    reference_sum = clipped_sum_of_gradients(reference, batch, max_grad_norm)
    gradient_norms = []
    for i in range(5):
        single = clipped_sum_of_gradients(
            make_model(dtype=torch.float64), (features[i : i + 1], labels[i : i + 1]), 1e9
        )
        gradient_norms.append(single.norm().item())
    assert gradient_norms[0] > 1000 * max_grad_norm
    # A mix of clipped and unclipped ordinary examples.
    assert min(gradient_norms[1:]) < max_grad_norm < max(gradient_norms[1:])

    # The huge example alone moves the weights by exactly lr * C / expected batch size.
    module = make_model(dtype=torch.float64)
    initial = flat_parameters(module)
    with start(module, dataset, mode=mode, noise_multiplier=0.0, max_grad_norm=max_grad_norm) as s:
        s.step((features[:1], labels[:1]))
        expected_batch = s.expected_batch_size
    update = (initial - flat_parameters(module)) / lr
    assert update.norm().item() == pytest.approx(max_grad_norm / expected_batch, rel=1e-6)

    # The whole batch: the sum of per-example clipped gradients over the expected batch size.
    module = make_model(dtype=torch.float64)
    with start(module, dataset, mode=mode, noise_multiplier=0.0, max_grad_norm=max_grad_norm) as s:
        s.step(batch)
    update = (initial - flat_parameters(module)) / lr
    torch.testing.assert_close(update, reference_sum / expected_batch, rtol=1e-5, atol=1e-9)


class BagOfItems(nn.Module):
    """A tiny recommender: mean item embedding of a history -> scores over the catalogue."""

    def __init__(self, items: int = 50, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(items, dim)
        self.output = nn.Linear(dim, items)
        self.double()  # float64: the reference comparison is exact up to rounding

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        return self.output(self.embedding(histories).mean(dim=1))


@pytest.mark.parametrize("mode", MODES)
def test_embedding_model_clips_per_example_like_the_reference(mode: str) -> None:
    generator = torch.Generator().manual_seed(5)
    histories = torch.randint(0, 50, (60, 4), generator=generator)
    next_items = torch.randint(0, 50, (60,), generator=generator)
    dataset = TensorDataset(histories, next_items)
    batch = (histories[:6], next_items[:6])
    lr, max_grad_norm = 0.1, 0.3

    reference_sum = clipped_sum_of_gradients(BagOfItems(), batch, max_grad_norm)
    module = BagOfItems()
    initial = flat_parameters(module)
    with start(module, dataset, mode=mode, noise_multiplier=0.0, max_grad_norm=max_grad_norm) as s:
        s.step(batch)
        assert s.step((histories[:0], next_items[:0])) is None  # empty batch: no forward
        expected_batch = s.expected_batch_size
    update = (initial - flat_parameters(module)) / lr
    torch.testing.assert_close(update, reference_sum / expected_batch, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_takes_a_step_of_calibrated_noise(mode: str) -> None:
    dataset = make_dataset(400)
    module = make_model(hidden=512)  # ~5.6k parameters to estimate the noise std
    initial = flat_parameters(module)
    lr, sigma, max_grad_norm = 0.1, 0.8, 2.0
    empty = (dataset.tensors[0][:0], dataset.tensors[1][:0])
    with start(
        module, dataset, mode=mode, lr=lr, noise_multiplier=sigma, max_grad_norm=max_grad_norm
    ) as session:
        assert session.step(empty) is None
        assert session.steps_taken == 1
        expected_batch = session.expected_batch_size
    noise = (initial - flat_parameters(module)) / lr
    assert noise.mean().abs().item() < 0.1 * sigma * max_grad_norm / expected_batch
    assert noise.std().item() == pytest.approx(sigma * max_grad_norm / expected_batch, rel=0.05)


@pytest.mark.parametrize("mode", MODES)
def test_poisson_epoch_with_empty_batches(mode: str) -> None:
    dataset = make_dataset(20)
    with start(make_model(), dataset, mode=mode, batch_size=1, seed=3) as session:
        losses = [session.step(batch) for batch in session.data_loader]
        assert session.steps_taken == len(losses) == 20
    assert None in losses  # at q = 1/20 about a third of the batches are empty
    assert any(loss is not None for loss in losses)


def test_noise_depends_on_the_seed() -> None:
    dataset = make_dataset(200)
    results = {}
    for seed in (1, 1, 2):
        module = make_model()
        with start(module, dataset, mode="hooks", seed=seed) as session:
            session.run_epoch()
        results.setdefault(seed, []).append(flat_parameters(module))
    torch.testing.assert_close(results[1][0], results[1][1], rtol=0, atol=0)
    assert (results[1][0] - results[2][0]).abs().max().item() > 1e-3


def test_unseeded_noise_is_unpredictable_even_if_torch_is_seeded() -> None:
    dataset = make_dataset(200)
    trained = []
    for _ in range(2):
        torch.manual_seed(0)  # model code seeding the global generator must not fix the noise
        module = make_model()
        with start(module, dataset, mode="hooks", seed=None) as session:
            session.run_epoch()
        trained.append(flat_parameters(module))
    assert (trained[0] - trained[1]).abs().max().item() > 1e-3


def test_loss_fn_must_return_one_loss_per_example() -> None:
    dataset = make_dataset(100)

    def mean_loss(module, batch):
        return per_example_cross_entropy(module, batch).mean()

    with start(make_model(), dataset, mode="hooks", loss_fn=mean_loss) as session:
        with pytest.raises(ValueError, match="one loss per example"):
            session.step(next(iter(session.data_loader)))


def test_a_module_is_never_wrapped_twice() -> None:
    dataset = make_dataset(100)
    module = make_model()
    session = start(module, dataset, mode="hooks")
    with pytest.raises(ValueError, match="build a fresh module"):
        start(module, dataset, mode="hooks")
    session.run_epoch()
    session.close()
    assert not any(hasattr(p, "grad_sample") for p in module.parameters())
    with pytest.raises(RuntimeError, match="closed"):
        session.step(next(iter(session.data_loader)))


def test_output_mode_leaves_no_hook_or_per_example_gradient_behind() -> None:
    dataset = make_dataset(100)
    module = make_model()
    with start(module, dataset, mode="output") as session:
        session.run_epoch()
    assert not module._forward_hooks
    assert not any(hasattr(p, "grad_sample") for p in module.parameters())


def test_output_mode_needs_a_loss_fn_that_calls_the_module_once() -> None:
    dataset = make_dataset(100)

    def twice(module, batch):
        module(batch[0])
        return per_example_cross_entropy(module, batch)

    with start(make_model(), dataset, mode="output", loss_fn=twice) as session:
        with pytest.raises(ValueError, match="exactly once"):
            session.step(next(iter(session.data_loader)))


def test_invalid_arguments_are_rejected() -> None:
    dataset = make_dataset(100)
    with pytest.raises(ValueError, match="grad_sample_mode"):
        start(make_model(), dataset, mode="functorch")
    with pytest.raises(ValueError, match="output_grad_samples"):
        start(make_model(), dataset, mode="output", output_grad_samples=None)
    with pytest.raises(ValueError, match="batch_size"):
        start(make_model(), dataset, mode="hooks", batch_size=0)


@pytest.mark.parametrize("mode", MODES)
def test_the_plan_follows_the_released_cohort_size_not_the_dataset(mode: str) -> None:
    # 400 customers, released as 437: sampling and averaging come from 437, as planned.
    with start(make_model(), make_dataset(400), mode=mode, cohort_size=437) as session:
        assert session.sample_rate == opacus_sample_rate(437, 40) == 1 / 11
        assert session.steps_per_epoch == opacus_steps_per_epoch(437, 40)
        assert session.expected_batch_size == int(437 / 11)
        session.run_epoch()
        assert session.segment() == DPSegment(1 / 11, 0.8, session.steps_per_epoch)


def test_an_empty_cohort_released_as_large_takes_every_step_of_pure_noise() -> None:
    module = make_model()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with start(module, make_dataset(0), mode="hooks", cohort_size=120) as session:
        assert session.run_epoch() != session.run_epoch()  # NaN: no example, no loss
        assert session.steps_taken == 2 * opacus_steps_per_epoch(120, 40) == 6
        after = session.state_dict()
    moved = [not torch.equal(before[k], after[k]) for k in before]
    assert all(moved)  # the noise moved every weight
    assert all(torch.isfinite(v).all() for v in after.values())


@pytest.mark.parametrize("mode", ["hooks", "output"])
def test_an_example_whose_gradient_is_not_finite_contributes_zero(mode: str) -> None:
    """One customer's loss overflows (as crafted weights can make it): the update is the one
    the session makes when that customer's gradient is zero — finite, and the same whether
    or not the customer was sampled."""
    dataset = make_dataset(40)
    poisoned = 7

    def overflowing(module: nn.Module, batch) -> torch.Tensor:
        features, labels = batch
        losses = functional.cross_entropy(module(features), labels, reduction="none")
        rows = (features == dataset.tensors[0][poisoned]).all(dim=1)
        return losses * torch.where(rows, torch.inf, 1.0)  # its gradient alone overflows

    def zero_for_the_poisoned(module: nn.Module, batch) -> torch.Tensor:
        features, labels = batch
        losses = functional.cross_entropy(module(features), labels, reduction="none")
        rows = (features == dataset.tensors[0][poisoned]).all(dim=1)
        return torch.where(rows, losses.detach() * 0, losses)

    trained = {}
    for name, loss_fn in (("inf", overflowing), ("zero", zero_for_the_poisoned)):
        with start(make_model(), dataset, mode=mode, loss_fn=loss_fn, batch_size=40) as session:
            session.run_epoch()  # one Poisson batch of rate 1: the poisoned customer is in it
            trained[name] = session.state_dict()
    for key, value in trained["inf"].items():
        assert torch.isfinite(value).all()
        assert torch.allclose(value, trained["zero"][key], atol=1e-6)
