"""The model registry: every model fedshop trains is one :class:`FederatedModel`, found by name.

A federated model owns everything about itself that the server, the sites and the
simulations need, so none of them names a model:

- the **facts** every site must share to build the same network and labels (the
  recommender's item catalogue, the churn cutoff): non-private, decided by the server from
  the run config or, in simulation, from the whole storefront split;
- its **examples** from a site's orders: one training example per customer (user-level DP)
  and the held-out evaluation data, by the model's fixed protocol;
- the **torch module**, its plain and DP-SGD **training** (DP through :mod:`privacy.dp`);
- **evaluation**: the queries a site answers about its held-out customers through the
  release mechanism (:attr:`FederatedModel.evaluation_queries`, :mod:`privacy.release`:
  each customer's contribution bounded, discrete Gaussian noise, accounted in the ledger),
  each customer's value for them, how the server pools several sites' noisy answers into
  metrics, and the exact metrics of held-out customers for whoever holds them (the site
  itself, or a researcher's simulation);
- what a server may send it: the **bounds** its shared facts must respect at a site
  (:meth:`FederatedModel.check_facts`: defaults from the site's export period, overridden
  by its policy) and the largest weight magnitude it accepts
  (:attr:`FederatedModel.max_abs_weight`);
- its **default local-training settings**, the **artefacts** its bundle carries (and the
  facts a site rebuilds from them), and its **use at a site** (:mod:`models.site_use`):
  the command and API resource a storefront reads, and every customer's answer.

Names: a built-in model ``<name>`` is the package ``models/<name>/`` (listed in
:data:`models.BUILTIN_MODELS`), its ``MODEL`` in ``models/<name>/model.py`` and its light
``SITE_USE`` in the package itself; any other importable module with a ``MODEL`` is a
model named by its dotted module path (a plug-in: ``models = "churn,my_package.my_model"``
in the run config). Adding a model is one package (or module), plus its table
``[tool.flwr.app.config.<name>]`` to override its defaults.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from common import wire
from models import BUILTIN_MODELS, schema
from models.site_use import SiteScores, SiteUse
from models.training import LocalResult, LocalTraining, TrainingSettings
from privacy.release import Query, exact_values

Facts = Mapping[str, Any]
"""A model's shared facts by key (JSON-serialisable values)."""


class WholeSplit(Protocol):
    """All storefronts' order lines of a simulation's split, read when called.

    Only ``columns`` are read (default: every canonical column), and string columns come
    as pandas categoricals: a split of 20M order lines in full, with a Python string per
    customer token and order id, is many GiB, while the column or two a fact needs is a
    few hundred MB. Nothing is kept after the call.
    """

    def __call__(self, columns: Sequence[str] = schema.COLUMNS) -> pd.DataFrame:
        """The chosen columns of every order line of the split."""
        ...


@dataclass(frozen=True)
class SiteData:
    """One site's data for one model, split by the model's fixed protocol."""

    train: Dataset
    """Exactly one example per training customer (user-level DP)."""
    evaluation: Any
    """The held-out customers, in whatever form the model's :meth:`evaluate` reads."""


class FederatedModel(ABC):
    """One model as fedshop trains it across storefronts (see the module docstring)."""

    name: str
    """The registry name: ``<name>`` of ``models/<name>/`` for a built-in model, else the
    module path."""
    evaluation_queries: tuple[Query, ...]
    """What a site releases about its held-out customers per evaluation (noisy, bounded
    per customer; :mod:`privacy.release`)."""
    headline_metric: str
    """The metric reports and the console show for the model (e.g. ``ndcg@10``)."""
    headline_higher_is_better: bool = True
    """Whether a larger :attr:`headline_metric` is better (false for an error, e.g. MSE):
    how tuning ranks its trials."""
    default_training: TrainingSettings
    """Local-training settings when the run config's table does not say otherwise."""
    shared_fact_keys: tuple[str, ...] = ()
    """Keys of :meth:`shared_facts`; each is also a key of the model's run-config table."""
    customer_means: tuple[str, ...] = ()
    """Metrics of :meth:`summarise` that are means over customers, so that groups of
    storefronts pool them weighted by their customers (``num-customers``)."""
    metric_labels: Mapping[str, str] = {}
    """How reports name the model's metrics (default: as :meth:`summarise` names them)."""
    site_use: SiteUse | None = None
    """How a storefront uses the model (None: it is trained, not served)."""
    max_abs_weight: float = 1e4
    """The largest weight magnitude a site accepts from a server: crafted weights that make
    one customer's loss overflow are refused before anything is reserved (a finite loss
    with an infinite gradient still contributes zero, :mod:`privacy.dp`)."""

    @property
    def evaluate_metric_keys(self) -> frozenset[str]:
        """The only keys a site's evaluate reply may carry: the queries' noisy answers, the
        held-out cohort's noisy size, and the noise of each."""
        names = {query.name for query in self.evaluation_queries}
        return frozenset(names | wire.EVALUATION_RELEASE_KEYS)

    def shared_facts(self, declared: Mapping[str, Any], whole_split: WholeSplit) -> dict[str, Any]:
        """The facts every site needs, from the run config's values (``declared``: the
        model's table, keys of :attr:`shared_fact_keys`) or, where a value is empty (in
        simulation), derived from ``whole_split(columns)``, all storefronts' order lines
        (ask only for the columns the derivation reads).

        Raises:
            ValueError: a declared value is invalid, or a fact can be neither read nor derived.
        """
        del declared, whole_split
        return {}

    @abstractmethod
    def build(self, facts: Facts) -> nn.Module:
        """A fresh plain torch module with the global architecture."""

    def initial_weights(self, facts: Facts, seed: int = 0) -> dict[str, np.ndarray]:
        """The global weights before round 1 (same facts and seed, same weights)."""
        torch.manual_seed(seed)
        return {name: value.numpy() for name, value in self.build(facts).state_dict().items()}

    @abstractmethod
    def site_data(self, orders: pd.DataFrame, facts: Facts) -> SiteData:
        """A site's order lines (canonical schema) -> training examples and held-out data."""

    @abstractmethod
    def train(self, module: nn.Module, dataset: Dataset, plan: LocalTraining) -> LocalResult:
        """Train ``module`` in place on one-example-per-customer ``dataset``: plain, or
        DP-SGD at ``plan.noise_multiplier`` (Opacus, :mod:`privacy.dp`)."""

    def check_facts(
        self, facts: Facts, bounds: Mapping[str, Any], data_period: tuple[str, str] | None
    ) -> None:
        """Refuse shared facts a site does not accept, before anything is reserved: outside
        ``bounds`` (the policy's for this model, :meth:`privacy.policy.SitePolicy.bounds_for`)
        or, where a bound is not set, outside the model's defaults for the site's export
        ``data_period`` (first and last day). The message names the fact and the bound.

        Raises:
            ValueError: a fact outside its bounds, or malformed.
        """
        del facts, data_period
        if bounds:
            raise ValueError(f"model {self.name} knows no fact bounds, got {sorted(bounds)}")

    @abstractmethod
    def held_out_size(self, evaluation: Any) -> int:
        """How many held-out customers ``evaluation`` holds."""

    @abstractmethod
    def evaluation_values(self, module: nn.Module, evaluation: Any) -> dict[str, np.ndarray]:
        """Each held-out customer's value for each of :attr:`evaluation_queries` (one array
        per query name, customers in the same order), as :func:`privacy.release.release`
        bounds and sums them."""

    @abstractmethod
    def summarise(self, answers: list[Mapping[str, Any]]) -> dict[str, float]:
        """Metrics over all the held-out customers of the sites whose answers are given
        (one site: that storefront's metrics). An answer holds each query's value by name
        and ``num-examples``: released (noisy) at a server, exact at the site itself."""

    def held_out_metrics(self, module: nn.Module, evaluations: Sequence[Any]) -> dict[str, float]:
        """The exact metrics of ``module`` over the held-out customers of ``evaluations``
        (one per site), for whoever holds them all: a site its own, a researcher's
        simulation every storefront's. Default: :meth:`summarise` of the exact answers."""
        return self.summarise(
            [
                {
                    **exact_values(self.evaluation_queries, self.evaluation_values(module, data)),
                    wire.NUM_EXAMPLES: self.held_out_size(data),
                }
                for data in evaluations
            ]
        )

    def artefacts(self, facts: Facts) -> dict[str, Any]:
        """JSON-serialisable artefacts the model bundle carries (default: the facts)."""
        return dict(facts)

    def facts_from_artefacts(self, artefacts: Mapping[str, Any]) -> dict[str, Any]:
        """The shared facts a site rebuilds the module with from the bundle's
        :meth:`artefacts` (default: the artefacts are the facts)."""
        return dict(artefacts)

    def site_scores(self, module: nn.Module, orders: pd.DataFrame, facts: Facts) -> SiteScores:
        """Use at the site (for a model with a :attr:`site_use`): the answer for every
        customer of the site's ``orders``, from the global ``module``.

        Raises:
            ValueError: the orders hold nothing to score.
        """
        raise NotImplementedError(f"model {self.name} has no use at a site")


_LOADED: dict[str, FederatedModel] = {}


def get_model(name: str) -> FederatedModel:
    """The model called ``name`` (see the module docstring), imported on first use.

    Raises:
        ValueError: no such module, or it has no ``MODEL`` of that name.
    """
    if name not in _LOADED:
        module_name = f"models.{name}.model" if name in BUILTIN_MODELS else name
        if "." not in module_name:
            raise ValueError(
                f"unknown model {name!r}: the built-in models are {list(BUILTIN_MODELS)}; "
                "a plug-in model is named by its dotted module path"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(f"model {name!r}: cannot import {module_name} ({error})") from None
        model = getattr(module, "MODEL", None)
        if not isinstance(model, FederatedModel) or model.name != name:
            raise ValueError(
                f"model {name!r}: {module_name} must define MODEL, a FederatedModel named {name!r}"
            )
        _LOADED[name] = model
    return _LOADED[name]


def model_names(text: str) -> list[str]:
    """The model names of a comma-separated list (run config ``models``), each registered.

    Raises:
        ValueError: the list is empty, repeats a name, or names an unknown model.
    """
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    if not names:
        raise ValueError(f"name at least one model, e.g. {','.join(BUILTIN_MODELS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a model is named twice in {names}")
    for name in names:
        get_model(name)
    return names
