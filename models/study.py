"""A model's fixed protocol applied to pooled order lines, as the lab's studies train and
score it: :class:`PooledStudy`, from :func:`pooled_study`.

``python -m lab compare`` and ``tune`` are written once over this interface and the
model's own :meth:`~models.registry.FederatedModel.train`, so they work for any
registered model (the membership audit is not yet): :func:`pooled_study` finds a
built-in model's study in its package (``models/<name>/study.py``: its protocol's test or
validation split, examples, a fresh module, metrics by group and baselines) or a
plug-in's ``pooled_study`` in its module, and otherwise builds :class:`SiteDataStudy`
from the model's federated form.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import pandas as pd
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from common import wire
from models import BUILTIN_MODELS, schema
from models.metrics import CUSTOMERS, OVERALL
from models.registry import FederatedModel, SiteData, get_model
from models.settings_per_epsilon import UNTUNED, EpsilonSettings, load_entries, settings_for

COUNTS = frozenset({"num-customers", wire.NUM_EXAMPLES})
"""How :meth:`~models.registry.FederatedModel.held_out_metrics` may name that count."""


class PooledStudy(ABC):
    """One model's protocol on every storefront's order lines pooled (see the module
    docstring). Metrics tables have one row per group — :data:`~models.metrics.OVERALL`,
    where the model's metrics allow :data:`~models.metrics.OUTSIDE_UK`, then each
    storefront — and the column :data:`CUSTOMERS` beside the model's metrics."""

    customers: int
    """Customers of the training data: the population δ is planned over."""

    @abstractmethod
    def storefronts(self) -> list[str]:
        """The storefronts with training examples and test customers, most training
        customers first: those a storefront-alone model is trained for."""

    @abstractmethod
    def examples(
        self, settings: Mapping[str, Any], seed: int, storefront: str | None = None
    ) -> Dataset:
        """One training example per customer (of ``storefront`` only, if given), drawn
        under ``settings`` (run-config spelling; a model reads the keys it has, e.g. the
        recommender's ``target-window``) and ``seed``."""

    @abstractmethod
    def build(self) -> nn.Module:
        """A fresh module of the model's architecture for this data (seed torch first)."""

    @abstractmethod
    def score(self, module: nn.Module) -> pd.DataFrame:
        """The metrics of ``module`` on every test customer, by group."""

    def baselines(self) -> dict[str, pd.DataFrame]:
        """The protocol's reference baselines by name, as metrics tables (default: none)."""
        return {}


class SiteDataStudy(PooledStudy):
    """Any model's study from its federated form: each storefront's :meth:`site_data` under
    the shared facts the pooled frame implies, trained pooled, scored by
    :meth:`held_out_metrics` overall and per storefront; ``declared``: facts the run config
    would set (a validation split's). No baselines."""

    def __init__(
        self, model: FederatedModel, frame: pd.DataFrame, declared: Mapping[str, Any] | None = None
    ) -> None:
        self.model = model
        whole = lambda columns=schema.COLUMNS: frame[list(columns)]  # noqa: E731
        self.facts = model.shared_facts(declared or {}, whole)
        by_storefront = frame.groupby(schema.STOREFRONT, observed=True)
        self.sites: dict[str, SiteData] = {
            str(name): model.site_data(orders, self.facts) for name, orders in by_storefront
        }
        self.customers = sum(len(site.train) for site in self.sites.values())

    def storefronts(self) -> list[str]:
        """Storefronts with training examples and held-out customers, largest first."""
        usable = [
            (len(site.train), name)
            for name, site in self.sites.items()
            if len(site.train) and self.model.held_out_size(site.evaluation)
        ]
        return [name for _, name in sorted(usable, key=lambda pair: (-pair[0], pair[1]))]

    def examples(
        self, settings: Mapping[str, Any], seed: int, storefront: str | None = None
    ) -> Dataset:
        """Every storefront's site training data (``storefront``'s only), concatenated."""
        del settings, seed  # the model's own examples, as its sites draw them
        if storefront is not None:
            return self.sites[storefront].train
        return ConcatDataset([site.train for site in self.sites.values()])

    def build(self) -> nn.Module:
        """The model's module for the pooled facts."""
        return self.model.build(self.facts)

    def score(self, module: nn.Module) -> pd.DataFrame:
        """The exact held-out metrics overall and per storefront."""
        groups = {OVERALL: list(self.sites.values())}
        groups |= {name: [site] for name, site in self.sites.items()}
        rows = {}
        for group, sites in groups.items():
            evaluations = [site.evaluation for site in sites]
            found = self.model.held_out_metrics(module, evaluations)
            size = sum(self.model.held_out_size(e) for e in evaluations)
            rows[group] = {CUSTOMERS: float(size)} | {
                key: value for key, value in found.items() if key not in COUNTS
            }
        return pd.DataFrame.from_dict(rows, orient="index")


def research_module(name: str) -> ModuleType:
    """Where model ``name``'s research side lives: ``models/<name>/study.py`` for a built-in
    model, the model's own module for a plug-in. It may define ``pooled_study(frame,
    validation)``, ``validation_orders(frame)`` (the order lines and run-config facts of
    its validation split), ``VALIDATION`` (what ``chosen-on`` says of settings tuned there)
    and ``SEARCH_SPACES`` / ``NON_PRIVATE_SPACES`` (per mode: setting -> values to try).

    Raises:
        ValueError: an unknown model.
    """
    get_model(name)
    return importlib.import_module(f"models.{name}.study" if name in BUILTIN_MODELS else name)


def pooled_study(name: str, frame: pd.DataFrame, validation: bool = False) -> PooledStudy:
    """Model ``name``'s study of the pooled order lines ``frame`` (its validation split when
    ``validation``; see the module docstring).

    Raises:
        ValueError: an unknown model, or a validation study of a model without a split.
    """
    own = getattr(research_module(name), "pooled_study", None)
    if own is not None:
        return own(frame, validation)
    if not validation:
        return SiteDataStudy(get_model(name), frame)
    orders, facts = validation_orders(name, frame)
    prefix = f"{name}."
    declared = {key[len(prefix) :]: value for key, value in facts.items() if key.startswith(prefix)}
    return SiteDataStudy(get_model(name), orders, declared)


def validation_orders(name: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The order lines of model ``name``'s validation split (its test customers' data never
    read) and the run-config facts (``<model>.<key>``) a federation on them needs.

    Raises:
        ValueError: the model defines no validation split.
    """
    split = getattr(research_module(name), "validation_orders", None)
    if split is None:
        raise ValueError(
            f"model {name} has no validation split: its research module defines "
            "no validation_orders"
        )
    return split(frame)


def search_space(name: str, mode: str, private: bool) -> dict[str, tuple[Any, ...]]:
    """The values ``python -m lab tune`` tries per setting for model ``name`` in ``mode``,
    under DP or not (:func:`research_module`).

    Raises:
        ValueError: the model has no such space.
    """
    spaces = getattr(
        research_module(name), "SEARCH_SPACES" if private else "NON_PRIVATE_SPACES", {}
    )
    if mode not in spaces:
        kind = "DP" if private else "non-private"
        raise ValueError(f"no {kind} search space for {name} in {mode} mode")
    return spaces[mode]


def current_settings(name: str, mode: str, epsilon: float) -> EpsilonSettings:
    """The settings file's entry of the nearest ε for model ``name`` and ``mode``
    (:func:`models.settings_per_epsilon.settings_for`); for a model the file does not list
    (a plug-in), its own ``default_training``, marked untuned."""
    if any(entry.model == name and entry.mode == mode for entry in load_entries()):
        return settings_for(name, mode, epsilon)
    model = get_model(name)
    return EpsilonSettings(
        model=name,
        mode=mode,
        epsilon=epsilon,
        settings=model.default_training.to_config(),
        metric=model.headline_metric,
        validation_score=None,
        chosen_on=UNTUNED,
    )


def validation_note(name: str) -> str:
    """What ``chosen-on`` says of settings tuned on model ``name``'s validation split."""
    return getattr(research_module(name), "VALIDATION", "validation")
