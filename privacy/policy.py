"""A site's privacy policy: what the storefront, not the server, allows its data to spend and send.

The policy is the site's own, kept in its privacy ledger (:mod:`privacy.ledger`, every
version with who set it, when and why) and changed only by a local act
(``fedshop-site policy``). A server's run config can ask for *less* than the policy
allows, never more: :func:`privacy.planning.plan_site_run` plans a request down to what
the policy leaves, or declines it with the reason.

Defaults (DESIGN.md): a lifetime cap of ε = 8 per model, δ = min(1e-5, 1/(10·customers)),
DP required, at most the whole cap in one run, evaluation aggregates only over cohorts of
at least 20 customers, noise planned by the PLD accountant, and only the built-in models
trained (a plug-in model must be named by the site).
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


class PolicyError(ValueError):
    """A policy value is invalid; the message names the setting."""


@dataclass(frozen=True)
class SitePolicy:
    """A site's privacy policy (see the module docstring).

    Attributes:
        epsilon_cap: lifetime ε cap of every model without its own cap.
        model_epsilon_caps: lifetime ε caps of named models.
        max_epsilon_per_run: the most ε one federated run may add to a model's spend.
        delta: the δ the site accepts; ``None`` = min(1e-5, 1/(10·training customers)).
        dp_required: decline any request to train without DP.
        min_cohort: the fewest customers an evaluation aggregate may be taken over.
        accountant: the accountant that plans this site's noise.
        models: the models this site trains; empty = the built-in ones. A plug-in model
            is named by its module path.
    """

    epsilon_cap: float = DEFAULT_EPSILON_CAP
    model_epsilon_caps: Mapping[str, float] = field(default_factory=dict)
    max_epsilon_per_run: float = DEFAULT_EPSILON_CAP
    delta: float | None = None
    dp_required: bool = True
    min_cohort: int = DEFAULT_MIN_COHORT
    accountant: str = DEFAULT_ACCOUNTANT
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_epsilon_caps", dict(self.model_epsilon_caps))
        object.__setattr__(self, "models", tuple(self.models))
        for name, value in [
            ("epsilon-cap", self.epsilon_cap),
            ("max-epsilon-per-run", self.max_epsilon_per_run),
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
        if self.accountant not in ACCOUNTANTS:
            raise PolicyError(
                f"policy accountant must be one of {sorted(ACCOUNTANTS)}, got {self.accountant!r}"
            )
        if not all(isinstance(model, str) and model for model in self.models):
            raise PolicyError(f"policy models must be model names, got {list(self.models)}")

    def cap_for(self, model: str) -> float:
        """The lifetime ε cap of ``model``."""
        return float(self.model_epsilon_caps.get(model, self.epsilon_cap))

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
            + ("auto, min(1e-5, 1/(10·customers))" if self.delta is None else f"{self.delta:g}"),
            f"dp-required: {'yes' if self.dp_required else 'no'}",
            f"min-cohort: {self.min_cohort} customers per evaluation aggregate",
            f"accountant: {self.accountant}",
            "models: " + (", ".join(self.models) if self.models else "the built-in models"),
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
