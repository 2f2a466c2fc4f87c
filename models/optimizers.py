"""Local optimizers by name, and FedProx's proximal step.

Sites and reference runs pick their optimizer by a name from the run config
(``recommender.optimizer = "momentum"``), so :data:`OPTIMIZERS` is the one place that
says what each name means.

FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks") keeps a
site's local model near the global model ``w_g`` it started the round from by adding
``mu/2 * ||w - w_g||^2`` to the local objective. Here that term is applied as a separate
proximal step after every optimizer step,

    w <- w - lr * mu * (w - w_g),

rather than through the loss, so that under DP-SGD it is not clipped per example nor
noised: it depends only on ``w`` and ``w_g``, not on any customer's data, so it costs no
privacy (post-processing), and Opacus's clipping bound keeps its meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]] = {
    "adam": lambda parameters, lr: torch.optim.Adam(parameters, lr=lr),
    "sgd": lambda parameters, lr: torch.optim.SGD(parameters, lr=lr),
    "momentum": lambda parameters, lr: torch.optim.SGD(parameters, lr=lr, momentum=0.9),
}
"""Optimizer names a run config may use: Adam, plain SGD, SGD with momentum 0.9."""


def build_optimizer(
    name: str,
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    *,
    proximal_mu: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``parameters``; with ``proximal_mu > 0``, every step is
    followed by FedProx's proximal step towards the parameters' values *now* (build it
    right after loading the global weights)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    if not 0 <= lr * proximal_mu < 1:
        # The proximal step contracts towards w_g only while lr * mu < 1.
        raise ValueError(f"need 0 <= learning rate x proximal mu < 1, got {lr} x {proximal_mu}")
    parameters = list(parameters)
    optimizer = OPTIMIZERS[name](parameters, lr)
    if proximal_mu > 0:
        anchors = [parameter.detach().clone() for parameter in parameters]
        optimizer.register_step_post_hook(_proximal_step(parameters, anchors, lr * proximal_mu))
    return optimizer


def _proximal_step(
    parameters: list[torch.nn.Parameter], anchors: list[torch.Tensor], pull: float
) -> Callable[..., None]:
    # Opacus's DPOptimizer steps the wrapped optimizer, so this hook runs after every
    # real (noised) step too.
    @torch.no_grad()
    def hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        del optimizer, args, kwargs
        for parameter, anchor in zip(parameters, anchors, strict=True):
            parameter.sub_(pull * (parameter - anchor))

    return hook
