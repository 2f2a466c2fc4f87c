import pytest
import torch

from models.churn.model import ChurnModel, train_churn_private
from models.optimizers import OPTIMIZERS, build_optimizer


def quadratic_step(optimizer: torch.optim.Optimizer, weight: torch.nn.Parameter) -> None:
    optimizer.zero_grad()
    (weight**2).sum().backward()  # gradient 2w
    optimizer.step()


def test_proximal_step_pulls_towards_the_starting_weights_by_lr_times_mu():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    start = weight.detach().clone()
    optimizer = build_optimizer("sgd", [weight], 0.1, proximal_mu=2.0)
    quadratic_step(optimizer, weight)
    after_sgd = start - 0.1 * 2 * start
    expected = after_sgd - 0.1 * 2.0 * (after_sgd - start)
    torch.testing.assert_close(weight.detach(), expected)


def test_without_mu_the_optimizer_is_the_plain_one():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    quadratic_step(build_optimizer("sgd", [weight], 0.1), weight)
    torch.testing.assert_close(weight.detach(), torch.tensor([0.8, -1.6]))


def test_momentum_is_sgd_with_momentum_and_names_are_checked():
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = build_optimizer("momentum", [weight], 0.1)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    assert set(OPTIMIZERS) == {"adam", "sgd", "momentum"}
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer("lbfgs", [weight], 0.1)
    with pytest.raises(ValueError, match="learning rate x proximal mu < 1"):
        build_optimizer("sgd", [weight], 1.0, proximal_mu=1.0)


def test_proximal_step_also_follows_every_opacus_dp_step():
    torch.manual_seed(0)
    features = torch.rand(64, 9) * 20
    labels = (torch.rand(64) < 0.5).float()
    dataset = torch.utils.data.TensorDataset(features, labels)

    def distance_travelled(mu: float) -> float:
        torch.manual_seed(1)
        model = ChurnModel()
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        optimizer = build_optimizer("sgd", model.parameters(), 0.5, proximal_mu=mu)
        train_churn_private(
            model,
            dataset,
            optimizer,
            epochs=3,
            batch_size=16,
            noise_multiplier=0.0,
            max_grad_norm=1.0,
            seed=3,
        )
        end = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((end - start).norm())

    free, held = distance_travelled(0.0), distance_travelled(1.5)
    assert free > 0
    assert held < 0.6 * free
