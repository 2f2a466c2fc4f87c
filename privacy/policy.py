"""A site's privacy policy: what the storefront, not the server, allows its data to spend and send.

The policy is the site's own, kept in its privacy ledger (:mod:`privacy.ledger`, every
version with who set it, when and why) and changed only by a local act
(``fedshop-site policy``). A server's run config can ask for *less* than the policy
allows, never more: :func:`privacy.planning.plan_site_run` plans a request down to what
the policy leaves, or declines it with the reason.

Defaults: a lifetime cap of ε = 8 per model, DP required, at most the whole cap in one
run, nothing trained or released for a cohort of fewer than 20 customers, evaluation
releases of at most :data:`DEFAULT_EVALUATION_EPSILON` per model and run over at most
:data:`DEFAULT_MAX_EVALUATIONS` evaluations, noise planned by the PLD accountant, and only
the built-in models trained (a plug-in model must be named by the site).

δ is fixed when the policy is written, from the site's size then
(:func:`privacy.planning.site_delta`), and every ε of the site is computed at it: a δ
derived from a cohort the server shapes (its facts choose who is in it) would let a
server raise δ and so lower the ε on record. A policy without a fixed δ (written before
δ was fixed) is accounted at the smallest δ its ledger has used.

A server's shared facts must respect bounds the site sets (the churn cutoff's window, the
smallest catalogue), or they are refused before anything is reserved. Each model derives
its default bounds from ``data_period`` — the first and last day of the site's export,
written at ``prepare`` — and ``fact_bounds`` overrides them per model
(:meth:`models.registry.FederatedModel.check_facts`); this module only keeps both.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from privacy.accountants import ACCOUNTANTS, DEFAULT_ACCOUNTANT

DEFAULT_EPSILON_CAP = 8.0
DEFAULT_MIN_COHORT = 20
DEFAULT_EVALUATION_EPSILON = 2.0
"""The most ε all of one run's evaluation releases of a model may spend, alone (composed
with the run's training in the ledger they cost far less at the margin: at a run of ε 8
the training noise grows 3 %); a run asking less ε gets a quarter of it for evaluation
(:func:`privacy.planning.evaluation_budget`)."""
DEFAULT_MAX_EVALUATIONS = 4
"""Evaluations of a model a site answers per run (the evaluation ε is shared among those
the server plans)."""
DEFAULT_COHORT_NOISE = 10.0
"""Standard deviation, in customers, of the noisy cohort sizes a site releases once per
run and model (the training and held-out customers): the sizes it plans with, reports as
``num-examples`` and compares with the minimum cohort. At 10 a run of ε 1 trains with 12 %
more noise than without the release (at 5: 61 %); a site of exactly the minimum cohort
trains in half of its runs, one of twice its size in 98 %."""


class PolicyError(ValueError):
    """A policy value is invalid; the message names the setting."""


@dataclass(frozen=True)
class SitePolicy:
    """A site's privacy policy (see the module docstring).

    Attributes:
        epsilon_cap: lifetime ε cap of every model without its own cap.
        model_epsilon_caps: lifetime ε caps of named models.
        max_epsilon_per_run: the most ε one federated run may add to a model's spend.
        delta: the δ every ε of the site is computed at, fixed when the policy is written
            (:func:`privacy.planning.site_delta`); ``None``: not fixed (an older policy),
            accounted at the smallest δ in the ledger.
        dp_required: decline any request to train without DP.
        min_cohort: the fewest customers (by the noisy count) for which the site trains
            or releases anything.
        evaluation_epsilon: the most ε of one run's evaluation releases of a model (alone).
        max_evaluations_per_run: the most evaluations of a model the site answers per run.
        cohort_noise: standard deviation of the noisy cohort sizes (customers).
        accountant: the accountant that plans this site's noise.
        models: the models this site trains; empty = the built-in ones. A plug-in model
            is named by its module path.
        data_period: the first and last day of the site's export (ISO dates), from which
            each model derives its default fact bounds; ``None``: no bounds from it.
        fact_bounds: per model, bounds its shared facts must respect beyond those defaults
            (read by the model; see the module docstring).
    """

    epsilon_cap: float = DEFAULT_EPSILON_CAP
    model_epsilon_caps: Mapping[str, float] = field(default_factory=dict)
    max_epsilon_per_run: float = DEFAULT_EPSILON_CAP
    delta: float | None = None
    dp_required: bool = True
    min_cohort: int = DEFAULT_MIN_COHORT
    evaluation_epsilon: float = DEFAULT_EVALUATION_EPSILON
    max_evaluations_per_run: int = DEFAULT_MAX_EVALUATIONS
    cohort_noise: float = DEFAULT_COHORT_NOISE
    accountant: str = DEFAULT_ACCOUNTANT
    models: tuple[str, ...] = ()
    data_period: tuple[str, str] | None = None
    fact_bounds: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_epsilon_caps", dict(self.model_epsilon_caps))
        object.__setattr__(self, "models", tuple(self.models))
        if not isinstance(self.fact_bounds, Mapping) or not all(
            isinstance(bounds, Mapping) for bounds in self.fact_bounds.values()
        ):
            raise PolicyError(
                f"policy fact-bounds must map models to bounds, got {self.fact_bounds!r}"
            )
        object.__setattr__(self, "fact_bounds", {m: dict(b) for m, b in self.fact_bounds.items()})
        if self.data_period is not None:
            period = tuple(self.data_period)
            if len(period) != 2 or not all(isinstance(day, str) for day in period):
                raise PolicyError(
                    f"policy data-period must be two ISO dates, got {self.data_period!r}"
                )
            object.__setattr__(self, "data_period", period)
        for name, value in [
            ("epsilon-cap", self.epsilon_cap),
            ("max-epsilon-per-run", self.max_epsilon_per_run),
            ("evaluation-epsilon", self.evaluation_epsilon),
            ("cohort-noise", self.cohort_noise),
            *((f"epsilon-cap of {m}", v) for m, v in self.model_epsilon_caps.items()),
        ]:
            if not _positive_number(value):
                raise PolicyError(f"policy {name} must be a finite number > 0, got {value!r}")
        if self.delta is not None and not (_positive_number(self.delta) and self.delta < 1):
            raise PolicyError(f"policy delta must be in (0, 1) or auto, got {self.delta!r}")
        if not isinstance(self.dp_required, bool):
            raise PolicyError(f"policy dp-required must be true or false, got {self.dp_required!r}")
        if isinstance(self.min_cohort, bool) or not isinstance(self.min_cohort, numbers.Integral):
            raise PolicyError(f"policy min-cohort must be a whole number, got {self.min_cohort!r}")
        if self.min_cohort < 1:
            raise PolicyError(f"policy min-cohort must be at least 1, got {self.min_cohort}")
        evaluations = self.max_evaluations_per_run
        if isinstance(evaluations, bool) or not isinstance(evaluations, numbers.Integral):
            raise PolicyError(
                f"policy max-evaluations-per-run must be a whole number, got {evaluations!r}"
            )
        if evaluations < 0:
            raise PolicyError(f"policy max-evaluations-per-run must be >= 0, got {evaluations}")
        if self.accountant not in ACCOUNTANTS:
            raise PolicyError(
                f"policy accountant must be one of {sorted(ACCOUNTANTS)}, got {self.accountant!r}"
            )
        if not all(isinstance(model, str) and model for model in self.models):
            raise PolicyError(f"policy models must be model names, got {list(self.models)}")

    def cap_for(self, model: str) -> float:
        """The lifetime ε cap of ``model``."""
        return float(self.model_epsilon_caps.get(model, self.epsilon_cap))

    def bounds_for(self, model: str) -> dict[str, Any]:
        """The bounds ``model``'s shared facts must respect (none: the model's own checks)."""
        return dict(self.fact_bounds.get(model, {}))

    def to_json(self) -> str:
        """The policy as JSON (``delta`` null = auto)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SitePolicy:
        """Read :meth:`to_json`'s output back.

        Raises:
            PolicyError: not a policy (unknown or invalid settings).
        """
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise PolicyError(f"the stored policy is not JSON ({error})") from None
        return from_settings(cls(), values)

    def describe(self) -> list[str]:
        """One line per setting, for people."""
        caps = ", ".join(f"{m} {c:g}" for m, c in sorted(self.model_epsilon_caps.items()))
        return [
            f"epsilon-cap: {self.epsilon_cap:g} per model over the site's lifetime"
            + (f" ({caps})" if caps else ""),
            f"max-epsilon-per-run: {self.max_epsilon_per_run:g}",
            "delta: "
            + (
                "not fixed (accounted at the smallest δ in the ledger)"
                if self.delta is None
                else f"{self.delta:g}, fixed"
            ),
            f"dp-required: {'yes' if self.dp_required else 'no'}",
            f"min-cohort: {self.min_cohort} customers (noisy count) to train or release",
            f"evaluation-epsilon: {self.evaluation_epsilon:g} per model and run",
            f"max-evaluations-per-run: {self.max_evaluations_per_run}",
            f"cohort-noise: {self.cohort_noise:g} customers (standard deviation)",
            f"accountant: {self.accountant}",
            "models: " + (", ".join(self.models) if self.models else "the built-in models"),
            "data-period: "
            + (" to ".join(self.data_period) if self.data_period else "not recorded"),
            *(
                f"{model}.{bound}: {value}"
                for model, bounds in sorted(self.fact_bounds.items())
                for bound, value in sorted(bounds.items())
            ),
        ]


def from_settings(policy: SitePolicy, values: Mapping[str, Any]) -> SitePolicy:
    """``policy`` with the settings of ``values`` (field names) changed.

    Raises:
        PolicyError: an unknown setting or an invalid value.
    """
    known = {f.name for f in fields(SitePolicy)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PolicyError(f"unknown policy settings {unknown}; known: {sorted(known)}")
    changes = dict(values)
    if "models" in changes:
        changes["models"] = tuple(changes["models"])
    try:
        return replace(policy, **changes)
    except TypeError as error:
        raise PolicyError(f"invalid policy settings ({error})") from None


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
