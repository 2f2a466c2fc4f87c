"""A model's local-training settings and one round of local training as a site runs it.

:class:`TrainingSettings` are the five knobs every model has (local epochs, optimizer,
learning rate, batch size, DP clipping norm): each model declares its defaults
(``FederatedModel.default_training``), the run config's per-model table
(``[tool.flwr.app.config.<model>]``) overrides them, and the server sends them to the
sites under the keys of :data:`common.wire.MODEL_TRAINING_KEYS`.
:class:`LocalTraining` adds what a round needs beyond them: FedProx's μ, the DP noise
multiplier (or none), a seed and the public cohort size DP-SGD plans with;
:func:`simulation_seed` says which of a simulation's
reproducible runs is being trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common import wire
from models.optimizers import OPTIMIZERS

SIMULATION_SEED = "simulation-seed"
"""Run-config key: which reproducible run of a simulation this is (default 0)."""


@dataclass(frozen=True)
class TrainingSettings:
    """How a site trains one model locally each round.

    Attributes:
        local_epochs: passes over the site's training customers per round.
        optimizer: a name of :data:`models.optimizers.OPTIMIZERS`.
        learning_rate: the optimizer's step size.
        batch_size: nominal batch size B (under DP the Poisson rate is 1/⌈n/B⌉).
        max_grad_norm: DP-SGD's per-customer clipping norm C.
    """

    local_epochs: int
    optimizer: str
    learning_rate: float
    batch_size: int
    max_grad_norm: float

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"'{wire.OPTIMIZER}' must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        for key, value in self.to_config().items():
            if key != wire.OPTIMIZER and not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise ValueError(f"'{key}' must be a finite number > 0, got {value!r}")

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, prefix: str = "", defaults: TrainingSettings | None
    ) -> TrainingSettings:
        """Read ``<prefix><key>`` for every key of :data:`common.wire.MODEL_TRAINING_KEYS`,
        falling back to ``defaults`` where a key is missing or empty (``None``: every key
        is required).

        Raises:
            ValueError: a key is missing (without defaults) or a value is invalid; the
                message names the key as the config spells it.
        """
        fallback = defaults.to_config() if defaults is not None else {}
        values = {}
        for key in wire.MODEL_TRAINING_KEYS:
            name = f"{prefix}{key}"
            if name in config and str(config[name]).strip() != "":  # "": not set here
                values[key] = config[name]
            elif key in fallback:
                values[key] = fallback[key]
            else:
                raise ValueError(f"config lacks '{name}'")
        try:
            return cls(
                local_epochs=_whole(values[wire.LOCAL_EPOCHS], f"{prefix}{wire.LOCAL_EPOCHS}"),
                optimizer=str(values[wire.OPTIMIZER]),
                learning_rate=float(values[wire.LEARNING_RATE]),
                batch_size=_whole(values[wire.BATCH_SIZE], f"{prefix}{wire.BATCH_SIZE}"),
                max_grad_norm=float(values[wire.MAX_GRAD_NORM]),
            )
        except ValueError as error:
            raise ValueError(f"{prefix.rstrip('.') or 'training plan'}: {error}") from None

    def to_config(self) -> dict[str, Any]:
        """The settings under their wire keys."""
        return {
            wire.LOCAL_EPOCHS: self.local_epochs,
            wire.OPTIMIZER: self.optimizer,
            wire.LEARNING_RATE: self.learning_rate,
            wire.BATCH_SIZE: self.batch_size,
            wire.MAX_GRAD_NORM: self.max_grad_norm,
        }


@dataclass(frozen=True)
class LocalTraining:
    """One round of local training as the server planned it and the site's privacy allows."""

    settings: TrainingSettings
    proximal_mu: float = 0.0
    """FedProx's μ (0: plain local training); see :mod:`models.optimizers`."""
    noise_multiplier: float | None = None
    """σ of DP-SGD; ``None`` trains without DP."""
    seed: int | None = None
    """Seeds sampling and noise in simulation; ``None`` in deployment."""
    cohort_size: int | None = None
    """The training cohort's size DP-SGD plans its sampling with: the site's released
    (noisy) count, never its exact one (:mod:`privacy.dp`); ``None``: the dataset's length."""


@dataclass(frozen=True)
class LocalResult:
    """What a round of local training did: mean loss and DP-SGD steps taken (0 without DP)."""

    train_loss: float
    dp_steps: int


def simulation_seed(run_config: Mapping[str, Any]) -> int:
    """The run config's :data:`SIMULATION_SEED`: it seeds a simulation's initial weights and
    every simulated site's sampling, target draws and DP noise, so that runs differing
    only in it measure the spread over seeds. Deployed sites ignore it (fresh randomness).

    Raises:
        ValueError: the value is not a whole number ≥ 0.
    """
    value = run_config.get(SIMULATION_SEED, 0)
    whole = isinstance(value, int | float) and not isinstance(value, bool)
    if not (whole and float(value).is_integer() and value >= 0):
        raise ValueError(f"'{SIMULATION_SEED}' must be a whole number >= 0, got {value!r}")
    return int(value)


def mean_finite(values: list[float]) -> float:
    """The mean of the finite values (NaN if none): an epoch of only empty Poisson
    batches has no loss."""
    finite = [value for value in values if math.isfinite(value)]
    return sum(finite) / len(finite) if finite else float("nan")


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"'{name}' must be a whole number, got {value!r}")
    return int(value)
