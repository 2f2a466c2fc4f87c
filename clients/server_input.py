"""Checks of what a server sends a site, made before the site reserves or releases anything.

The server may be careless or hostile (README, "Privacy and threat model"), so its
weights, shared facts and plan are input to validate, like an export: weights must have
exactly the model's names and shapes, be finite and stay within the model's
:attr:`~models.registry.FederatedModel.max_abs_weight`; facts must lie within the bounds
of the site's policy (:meth:`~models.registry.FederatedModel.check_facts`); the plan must
parse. Every check reads the message and the site's policy only, never its customers, so
a refusal (``invalid-server-input`` or ``privacy-policy``) says nothing about them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord
from torch import nn

from common import wire
from models.registry import Facts, FederatedModel
from privacy.policy import SitePolicy


class InvalidServerInput(ValueError):
    """What the server sent fails a check; the message names the check, never data."""


class FactsOutsidePolicy(ValueError):
    """The server's shared facts lie outside the bounds of the site's policy."""


def checked_module(
    model: FederatedModel, facts: Facts, weights: dict[str, np.ndarray]
) -> nn.Module:
    """A fresh module of ``model`` holding the server's ``weights``, after checking them.

    Raises:
        InvalidServerInput: names or shapes other than the model's, a weight that is not
            a finite number, or one beyond the model's largest magnitude.
    """
    module = model.build(facts)
    expected = module.state_dict()
    if set(weights) != set(expected):
        raise InvalidServerInput(
            f"the {model.name} weights name {sorted(set(weights) ^ set(expected))} "
            "differently from the model"
        )
    state = {}
    for name, target in expected.items():
        value = np.asarray(weights[name])
        if value.shape != tuple(target.shape):
            raise InvalidServerInput(
                f"the {model.name} weight {name} has shape {value.shape}, the model "
                f"{tuple(target.shape)}"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise InvalidServerInput(f"the {model.name} weight {name} is not floating point")
        if not np.isfinite(value).all():
            raise InvalidServerInput(f"the {model.name} weight {name} is not finite")
        if value.size and float(np.abs(value).max()) > model.max_abs_weight:
            raise InvalidServerInput(
                f"the {model.name} weight {name} exceeds the largest magnitude the model "
                f"accepts, {model.max_abs_weight:g}"
            )
        state[name] = torch.from_numpy(value.astype(target.numpy().dtype, copy=True))
    module.load_state_dict(state, strict=True)
    return module


def check_facts(model: FederatedModel, facts: Facts, policy: SitePolicy) -> None:
    """Refuse facts outside the bounds the site's policy sets for ``model``.

    Raises:
        FactsOutsidePolicy: naming the fact and the bound.
    """
    try:
        model.check_facts(facts, policy.bounds_for(model.name), policy.data_period)
    except (KeyError, TypeError, ValueError) as error:
        raise FactsOutsidePolicy(f"the server's {model.name} facts: {error}") from None


def planned_evaluations(config: ConfigRecord, policy: SitePolicy) -> int:
    """How many evaluations of the model this run may have: what the server plans, at most
    the policy's maximum (the maximum when the server does not say).

    Raises:
        InvalidServerInput: a planned number that is not a whole number >= 0.
    """
    value: Any = config.get(wire.PLANNED_EVALUATIONS, policy.max_evaluations_per_run)
    whole = isinstance(value, int | float) and not isinstance(value, bool)
    if not (whole and math.isfinite(value) and float(value).is_integer() and value >= 0):
        raise InvalidServerInput(
            f"'{wire.PLANNED_EVALUATIONS}' must be a whole number >= 0, got {value!r}"
        )
    return min(int(value), policy.max_evaluations_per_run)
