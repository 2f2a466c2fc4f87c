"""Benchmark: membership inference against both models, without and with DP, centralized
and federated.

Run ``python -m lab.benchmarks.membership`` (``--quick`` for a smoke run: a few
epochs, :data:`QUICK_REFERENCES` references, ε = 8 only); it prints a Markdown section for
BENCHMARKS.md. Progress goes to stderr, with the seconds per trained model and the time
left of each set of reference models; stdout is only the Markdown.

Population: the bundled data (ingested under a throwaway key), split into storefronts. A
seeded half of the customers of every storefront are **non-members** (chosen by a seeded
hash of each customer's first invoice, so the draw does not depend on the key): all their
rows are removed from the data of every target model. The attacked example of a customer
is the one training example a model sees for them (user-level DP's unit):

- recommender: :class:`models.recommender.features.TrainingExamples` with
  ``target_window=1`` — the history before the customer's last training invoice, with that
  invoice as the target basket (customers with at least two training invoices);
- churn: the customer's nine features and label at the cutoff; the members attacked are
  those the churn protocol trains on (its fixed 20 % holdout is not attacked).

A non-member's example is built the same way from their own rows. Every model shares one
catalogue (the whole data's) and one churn cutoff, as the federation's shared facts.

Targets per model: centralized non-private and DP at ε = 1, 3, 8 with the comparison's
settings (:mod:`lab.compare`); a deliberately over-fitted non-private model; and
federated non-private and DP at ε = 1, 3, 8 on the member-only storefronts with the main
job's run configs (:mod:`simulations.run_configs`), trained by
:func:`lab.sequential.run_sequential_federation` (the sites' real code) and
attacked through its final global weights.

Attacks (:mod:`lab.membership_attack`): the loss threshold (Yeom et al. 2018), the
calibrated loss, and offline and online LiRA (Carlini et al. 2022). The last three compare
the target with ``--references`` reference models trained **with the target's own
recipe**: an attacker who knows how the target was trained (DP-SGD at its ε, or
federated rounds) trains references the same way, and references of another recipe make
the calibrated attacks under-state the risk (non-private references put a DP target's
losses, all higher, on another scale). Per recipe:

- centralized non-private, DP at ε and over-fitted: :meth:`ModelAudit.train` with the
  target's method and ε (DP: the same settings and DP-SGD, σ planned for the reference's
  own examples at the target's ε and δ);
- federated at ε (or non-private): :func:`run_sequential_federation` with the target's run
  config on the storefront split of the reference's customers only, one run giving both
  models' references.

The standard efficient design (Carlini et al. 2022): reference ``j`` trains on a seeded
half of all customers (:class:`ReferenceHalves`, members and non-members alike), every
customer in exactly half of the references, so each attacked example has IN and OUT
references; online LiRA uses both, the calibrated loss and offline LiRA only the OUT ones.
The halves are the same for every recipe; one set of references per (model, recipe)
serves every target of that recipe. A federated reference counts as IN for the examples
its run really trained on (:meth:`ModelAudit.trained_by_federation`: a site's churn
protocol holds out a fifth of the customers it has).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.atomic_files import atomic_write
from lab.compare import (
    QUICK_EPOCHS,
    centralized_dp_plan,
    centralized_dp_settings,
    fit,
    ingest_bundled,
    non_private_settings,
    quick_settings,
)
from lab.membership_attack import (
    LOW_FPR,
    AttackResult,
    Variance,
    calibrated_scores,
    chance_auc_std,
    evaluate_attack,
    lira_offline_scores,
    lira_online_scores,
    loss_threshold_scores,
    reference_membership,
    variance_for,
)
from lab.sequential import SequentialResult, run_sequential_federation
from models import schema
from models.churn.model import (
    CUTOFF,
    ChurnModel,
    churn_dataset,
    per_example_loss,
)
from models.churn.protocol import churn_data, holdout_mask
from models.churn.study import train_centralized
from models.recommender.features import TrainingExamples, build_histories, collate_examples
from models.recommender.model import CATALOGUE, NextBasketRecommender, basket_loss
from models.recommender.protocol import catalogue_of, split_next_basket
from models.registry import Facts, get_model
from models.settings_per_epsilon import NON_PRIVATE, federated_run_config
from models.training import SIMULATION_SEED, TrainingSettings
from simulations.progress import SILENT, Progress
from simulations.run_configs import (
    MAIN_RUN_CONFIG,
    PLAIN_RUN_CONFIG,
    PLAIN_SITE_POLICY,
    QUICK_OVERRIDES,
)
from simulations.site_policies import apply_site_policy
from simulations.storefronts import assign_storefronts, prepare_storefronts

EPSILONS: tuple[float, ...] = (1.0, 3.0, 8.0)
"""Target ε of the DP models, centralized and per site."""
QUICK_EPSILONS: tuple[float, ...] = (8.0,)
"""The ε of a ``--quick`` run: the goal's only."""
GOAL_EPSILON = 8.0
GOAL_AUC = 0.55
"""The audit's goal: no attack beats ROC-AUC 0.55 at ε = 8."""
NON_MEMBER_SHARE = 0.5
"""Share of each storefront's customers left out of every target's data."""
REFERENCES = 32
"""Reference models per (model, recipe): 16 IN and 16 OUT per example. Measured per
reference on the shared 2-core machine (CPU s): recommender 5.6 non-private, 3.5-4.7 DP,
67 over-fitted; churn 0.3, 0.8-2.4, 19; one federated split 42 (4 runs of both models). So
about 150 s per reference and 1.4 h of CPU for the full run, where 64 (per-example
variances) would take 2.7 h; with 32, LiRA's variance is pooled over examples
(:func:`lab.membership_attack.variance_for`)."""
QUICK_REFERENCES = 4

OVERFIT_RECOMMENDER = TrainingSettings(
    local_epochs=200, optimizer="adam", learning_rate=0.05, batch_size=16, max_grad_norm=1.0
)
"""The over-fitted recommender: 10x the epochs, 5x the learning rate and a quarter of the
batch of the non-private reference (max-grad-norm is unused without DP)."""
OVERFIT_RECOMMENDER_HIDDEN: tuple[int, ...] = (64, 64)
"""Its MLP widths (the product model's: one layer of 16). Width adds little: the model has
no per-customer parameters, so what it can memorise sits mostly in the item biases."""
OVERFIT_CHURN_HIDDEN_UNITS = 256
OVERFIT_CHURN_EPOCHS = 5000
"""The over-fitted churn MLP: 32x wider, 17x the full-batch epochs, no weight decay."""

CENTRALIZED = "centralized"
OVERFITTED = "centralized, over-fitted"
FEDERATED = "federated"
DECLINED_SHOWN = 10
"""Declined site replies listed in the report (the rest are counted)."""
CLEAR_SIGMAS = 3.0
"""An AUC this many standard deviations of a signal-free attack above 0.5 is a clear leak."""
LOSS_THRESHOLD = "loss threshold"
CALIBRATED = "calibrated loss"
LIRA_OFFLINE = "LiRA offline"
LIRA_ONLINE = "LiRA online"


@dataclass(frozen=True)
class Target:
    """One trained model to attack."""

    training: str
    epsilon: float | None
    """Target ε; ``None`` for a non-private model."""
    module: nn.Module


@dataclass(frozen=True)
class Row:
    """One attack on one target."""

    model: str
    training: str
    epsilon: float | None
    attack: str
    result: AttackResult


@dataclass(frozen=True)
class References:
    """One recipe's reference models, as the attacks see them."""

    losses: np.ndarray
    """``(k, n)`` each reference's loss of each attacked example."""
    is_in: np.ndarray
    """``(k, n)`` bool, True where reference ``j`` trained on example ``i``."""


@dataclass(frozen=True)
class ReferenceHalves:
    """Which customers each reference model trains on: a seeded half of all customers of the
    data (:func:`lab.membership_attack.reference_membership`), drawn once so that
    a federated reference run, which trains both models on one split, and the centralized
    references agree on who is IN."""

    customers: pd.Index
    is_in: np.ndarray
    """``(references, customers)`` bool."""

    @classmethod
    def draw(cls, frame: pd.DataFrame, references: int, seed: int) -> ReferenceHalves:
        """Halves of the customers of ``frame``."""
        customers = pd.Index(np.sort(frame[schema.CUSTOMER].unique()))
        return cls(customers, reference_membership(len(customers), references, seed))

    def of(self, customers: np.ndarray) -> np.ndarray:
        """``(references, len(customers))``: the halves restricted to ``customers``."""
        return self.is_in[:, self.customers.get_indexer(customers)]

    def frame(self, frame: pd.DataFrame, reference: int) -> pd.DataFrame:
        """The rows of ``frame`` of reference ``reference``'s customers."""
        return frame[frame[schema.CUSTOMER].isin(self.customers[self.is_in[reference]])]


class ModelAudit(ABC):
    """One model's attacked examples, and how the benchmark trains and scores its models.

    Attributes:
        name: the registry name of the model.
        facts: its shared facts (one catalogue or cutoff for every target).
        customers: tokens of the attacked examples, in example order.
        is_member: True where the customer's rows are in the targets' data.
        quick: train a few epochs only (smoke runs).
    """

    name: str
    example: str
    """What the attacked example is, for the report."""

    def __init__(
        self, facts: Facts, customers: np.ndarray, is_member: np.ndarray, quick: bool
    ) -> None:
        self.facts = dict(facts)
        self.customers = customers
        self.is_member = is_member
        self.quick = quick

    @abstractmethod
    def losses(self, module: nn.Module) -> np.ndarray:
        """The module's loss on every attacked example, float64."""

    @abstractmethod
    def train_plain(self, keep: np.ndarray, seed: int) -> nn.Module:
        """A model trained without DP on the examples where ``keep`` is True, with the
        centralized non-private settings."""

    @abstractmethod
    def train_private(self, epsilon: float, seed: int, keep: np.ndarray | None = None) -> nn.Module:
        """A model trained with DP-SGD at ``epsilon`` on the examples where ``keep`` is True
        (default: the members), with the centralized settings; δ is the targets'."""

    @abstractmethod
    def train_overfitted(self, seed: int, keep: np.ndarray | None = None) -> nn.Module:
        """A model over-fitted on purpose, without DP, on the examples where ``keep`` is
        True (default: the members)."""

    @abstractmethod
    def trained_by_federation(self, frame: pd.DataFrame) -> np.ndarray:
        """Which attacked examples a federated run on the rows ``frame`` trains on."""

    def train(self, training: str, epsilon: float | None, keep: np.ndarray, seed: int) -> nn.Module:
        """A centralized model of the recipe of the targets ``(training, epsilon)`` on the
        examples where ``keep`` is True: targets and their references share this."""
        if training == OVERFITTED:
            return self.train_overfitted(seed, keep)
        if epsilon is None:
            return self.train_plain(keep, seed)
        return self.train_private(epsilon, seed, keep)

    def global_model(self, weights: Mapping[str, np.ndarray]) -> nn.Module:
        """The model as the federation built it, holding ``weights``."""
        module = get_model(self.name).build(self.facts)
        module.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
        return module


class RecommenderAudit(ModelAudit):
    """The next-basket recommender's examples: history -> last training invoice."""

    name = "recommender"
    example = "history → last training invoice (customers with ≥ 2 training invoices)"

    def __init__(self, frame: pd.DataFrame, non_members: pd.Index, quick: bool) -> None:
        catalogue = catalogue_of(frame)
        split = split_next_basket(frame)
        self.histories = build_histories(split.train, catalogue)
        examples = TrainingExamples(self.histories, target_window=1)
        customers = np.asarray(examples.customers, dtype=object)
        super().__init__({CATALOGUE: catalogue}, customers, ~np.isin(customers, non_members), quick)
        # The centralized DP plan's δ counts the members with training rows (as compare does).
        trained_customers = split.train[schema.CUSTOMER].unique()
        self.delta_customers = int((~np.isin(trained_customers, non_members)).sum())
        self.batches = list(DataLoader(examples, batch_size=512, collate_fn=collate_examples))

    def losses(self, module: nn.Module) -> np.ndarray:
        """Per-example :func:`models.recommender.basket_loss`."""
        module.eval()
        with torch.no_grad():
            return (
                torch.cat([basket_loss(module, batch) for batch in self.batches]).double().numpy()
            )

    def _build(self) -> NextBasketRecommender:
        return NextBasketRecommender(len(self.facts[CATALOGUE]))

    def _examples(self, keep: np.ndarray, target_window: int | None = 1) -> TrainingExamples:
        histories = {c: self.histories[c] for c in self.customers[keep]}
        return TrainingExamples(histories, target_window=target_window)

    def train_plain(self, keep: np.ndarray, seed: int) -> nn.Module:
        """The comparison's centralized non-private settings on the kept customers."""
        entry = non_private_settings(self.name)
        settings = quick_settings(entry.training(), self.quick)
        examples = self._examples(keep, entry.target_window())
        return fit(self.name, self._build, examples, settings, seed)[0]

    def train_private(self, epsilon: float, seed: int, keep: np.ndarray | None = None) -> nn.Module:
        """The comparison's DP settings for ``epsilon``, σ for one centralized plan."""
        entry = centralized_dp_settings(self.name, epsilon)
        settings = quick_settings(entry.training(), self.quick)
        examples = self._examples(_or(keep, self.is_member), entry.target_window())
        plan = centralized_dp_plan(epsilon, len(examples), self.delta_customers, settings)
        return fit(self.name, self._build, examples, settings, seed, plan.noise_multiplier)[0]

    def train_overfitted(self, seed: int, keep: np.ndarray | None = None) -> nn.Module:
        """:data:`OVERFIT_RECOMMENDER` with :data:`OVERFIT_RECOMMENDER_HIDDEN`."""
        settings = quick_settings(OVERFIT_RECOMMENDER, self.quick)
        members = self._examples(_or(keep, self.is_member))
        num_items = len(self.facts[CATALOGUE])
        wide = partial(NextBasketRecommender, num_items, hidden=OVERFIT_RECOMMENDER_HIDDEN)
        return fit(self.name, wide, members, settings, seed)[0]

    def trained_by_federation(self, frame: pd.DataFrame) -> np.ndarray:
        """The customers with rows in ``frame``: a customer's attacked example depends on
        their own invoices only, so a site with their rows trains on it."""
        return np.isin(self.customers, frame[schema.CUSTOMER].unique())


class ChurnAudit(ModelAudit):
    """The churn model's examples: a customer's features and label at the cutoff."""

    name = "churn"
    example = "features and label at the cutoff (members: the protocol's training customers)"

    def __init__(
        self,
        frame: pd.DataFrame,
        member_frame: pd.DataFrame,
        non_members: pd.Index,
        quick: bool,
    ) -> None:
        everyone = churn_data(frame)
        # What the targets train on: the protocol's training part of the members' data, at
        # the whole data's cutoff (the federation's shared fact), as every site picks it.
        trained = churn_data(member_frame, cutoff=everyone.cutoff).part(held_out=False)
        index = everyone.features.index
        is_member = index.isin(trained.features.index)
        self.data = everyone.subset(is_member | index.isin(non_members))
        customers = self.data.features.index.to_numpy(dtype=object)
        super().__init__(
            {CUTOFF: everyone.cutoff.isoformat()},
            customers,
            ~np.isin(customers, non_members),
            quick,
        )
        self.cutoff = everyone.cutoff
        self.tensors = churn_dataset(self.data).tensors
        # The centralized DP plan's δ counts the targets' training customers.
        self.delta_customers = int(self.is_member.sum())

    def losses(self, module: nn.Module) -> np.ndarray:
        """Per-example :func:`models.churn.per_example_loss`."""
        module.eval()
        with torch.no_grad():
            return per_example_loss(module, self.tensors).double().numpy()

    def train_plain(self, keep: np.ndarray, seed: int) -> nn.Module:
        """The centralized reference recipe (:func:`models.churn.study.train_centralized`)."""
        return train_centralized(self.data.subset(keep), seed=seed)

    def train_private(self, epsilon: float, seed: int, keep: np.ndarray | None = None) -> nn.Module:
        """The comparison's DP settings for ``epsilon``, σ for one centralized plan."""
        settings = quick_settings(
            centralized_dp_settings(self.name, epsilon).training(), self.quick
        )
        examples = self.data.subset(_or(keep, self.is_member))
        plan = centralized_dp_plan(epsilon, len(examples.labels), self.delta_customers, settings)
        dataset = churn_dataset(examples)
        return fit(self.name, ChurnModel, dataset, settings, seed, plan.noise_multiplier)[0]

    def train_overfitted(self, seed: int, keep: np.ndarray | None = None) -> nn.Module:
        """Full-batch Adam, :data:`OVERFIT_CHURN_HIDDEN_UNITS` wide, no weight decay."""
        return train_centralized(
            self.data.subset(_or(keep, self.is_member)),
            seed=seed,
            hidden_units=OVERFIT_CHURN_HIDDEN_UNITS,
            epochs=QUICK_EPOCHS if self.quick else OVERFIT_CHURN_EPOCHS,
            weight_decay=0.0,
        )

    def trained_by_federation(self, frame: pd.DataFrame) -> np.ndarray:
        """The customers of the protocol's training part of ``frame`` at the shared cutoff,
        as the targets' members: each site holds out a fifth of its own customers."""
        trained = churn_data(frame, cutoff=self.cutoff).part(held_out=False)
        return np.isin(self.customers, trained.features.index)


def _or(keep: np.ndarray | None, default: np.ndarray) -> np.ndarray:
    return default if keep is None else keep


def non_member_customers(frame: pd.DataFrame, share: float, seed: int) -> pd.Index:
    """A seeded ``share`` of every storefront's customers, drawn by the churn protocol's
    stratified hash (:func:`models.churn.protocol.holdout_mask`) over each customer's first
    invoice id, so the draw is the same under every pseudonymisation key."""
    per_customer = frame.groupby(schema.CUSTOMER)
    storefront = per_customer[schema.STOREFRONT].first()
    anchors = per_customer[schema.ORDER].min()
    labels = pd.Series(0, index=storefront.index)
    drawn = holdout_mask(storefront, labels, anchors, fraction=share, seed=seed)
    return drawn.index[drawn.to_numpy()]


class Federation:
    """How the audit trains federated models: one run config per ε (``None``: non-private),
    the shared facts, and a fresh site ledger per run, so targets and references are the
    same recipe run on different customers.

    Args:
        work: a scratch directory (split and ledgers of every run go under it).
        facts: the shared facts per model.
        epsilons: the ε of the DP runs.
        quick: one round of one epoch per model (:data:`QUICK_OVERRIDES`).
    """

    def __init__(
        self, work: Path, facts: Mapping[str, Facts], epsilons: Sequence[float], quick: bool
    ) -> None:
        self.work = work
        catalogue_file = work / "catalogue.txt"
        catalogue_file.write_text("\n".join(facts["recommender"][CATALOGUE]) + "\n")
        shared = {
            f"recommender.{CATALOGUE}": str(catalogue_file),
            f"churn.{CUTOFF}": facts["churn"][CUTOFF],
            **(QUICK_OVERRIDES if quick else {}),
        }
        plain = federated_run_config(list(facts), NON_PRIVATE)
        self.configs: dict[float | None, dict[str, Any]] = {
            None: {**PLAIN_RUN_CONFIG, **plain, **shared}
        }
        self.configs.update(
            {epsilon: {**MAIN_RUN_CONFIG, "epsilon": epsilon, **shared} for epsilon in epsilons}
        )
        self.rounds = int(self.configs[None]["num-server-rounds"])

    def split(self, frame: pd.DataFrame, name: str) -> Path:
        """Write ``frame`` as the storefront split ``name``."""
        split = self.work / name
        prepare_storefronts(frame, split)
        return split

    def run(
        self,
        split: Path,
        epsilon: float | None,
        seed: int | None = None,
        progress: Progress = SILENT,
    ) -> SequentialResult:
        """The run config of ``epsilon`` on ``split`` (``seed``: the simulation seed, else
        the app's), in a fresh run directory removed afterwards."""
        config = self.configs[epsilon]
        if seed is not None:
            config = {**config, SIMULATION_SEED: seed}
        run_dir = self.work / f"{split.name}-eps-{_epsilon_label(epsilon)}"
        # the non-private baseline needs sites whose policy lets DP be off
        policy = PLAIN_SITE_POLICY if epsilon is None else []
        apply_site_policy(split, run_dir, policy, set_by="membership audit")
        try:
            return run_sequential_federation(split, run_dir, config, progress=progress)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)


def declined_replies(epsilon: float | None, result: SequentialResult, run: str) -> list[str]:
    """A run's declined or failed site replies, for the report."""
    label = _epsilon_label(epsilon)
    return [f"{run} ε {label} {m} round {line}" for m, ls in result.declined.items() for line in ls]


def federated_weights(
    member_frame: pd.DataFrame, federation: Federation, progress: Progress
) -> tuple[dict[float | None, dict[str, dict[str, np.ndarray]]], list[str]]:
    """The federated targets: both models trained on the member-only storefronts,
    non-private (:data:`PLAIN_RUN_CONFIG` with the non-private federated settings) and at
    each ε (:data:`MAIN_RUN_CONFIG`).

    Returns:
        Per ε (``None``: non-private), the final global weights per model; and every
        declined or failed site reply.
    """
    with progress.step("write the member-only storefront split"):
        split = federation.split(member_frame, "targets")
    weights, declined = {}, []
    for epsilon in federation.configs:
        with progress.step(f"federated target, ε {_epsilon_label(epsilon)}"):
            result = federation.run(split, epsilon, progress=progress)
        weights[epsilon] = result.weights
        declined += declined_replies(epsilon, result, "target")
    shutil.rmtree(split)
    return weights, declined


class SetClock:
    """The progress label of the next model of a set of ``total``: the mean seconds per
    model so far and the estimated time left of the set (the full run is long)."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.seconds: list[float] = []
        self._began = 0.0

    def next(self) -> str:
        """Start timing the next model; its label for :meth:`Progress.step`."""
        self._began = time.perf_counter()
        done = len(self.seconds)
        label = f"{self.label}: reference {done + 1}/{self.total}"
        if not self.seconds:
            return label
        mean = sum(self.seconds) / done
        left = mean * (self.total - done)
        return f"{label} (~{mean:.1f} s per model so far, ~{left / 60:.1f} min left in the set)"

    def done(self) -> None:
        """The model started by :meth:`next` is trained."""
        self.seconds.append(time.perf_counter() - self._began)


def federated_references(
    frame: pd.DataFrame,
    audits: Sequence[ModelAudit],
    federation: Federation,
    halves: ReferenceHalves,
    seed: int,
    progress: Progress,
) -> tuple[dict[float | None, dict[str, References]], list[str]]:
    """Per ε (``None``: non-private), both models' references trained as the federated
    targets were, each run on the storefront split of one reference half of the customers
    (``seed + 1 + j`` seeds reference ``j``'s simulation, as the centralized ones).

    Returns:
        Per ε and model, the references; and every declined or failed site reply.
    """
    references = halves.is_in.shape[0]
    losses: dict[float | None, dict[str, list[np.ndarray]]] = {
        epsilon: {audit.name: [] for audit in audits} for epsilon in federation.configs
    }
    is_in: dict[str, list[np.ndarray]] = {audit.name: [] for audit in audits}
    clocks = {
        epsilon: SetClock(f"federated ε {_epsilon_label(epsilon)}", references)
        for epsilon in federation.configs
    }
    declined: list[str] = []
    for number in range(references):
        reference_frame = halves.frame(frame, number)
        split = federation.split(reference_frame, f"reference-{number + 1}")
        for audit in audits:
            is_in[audit.name].append(audit.trained_by_federation(reference_frame))
        for epsilon, clock in clocks.items():
            with progress.step(clock.next()):
                result = federation.run(split, epsilon, seed + 1 + number)
            clock.done()
            declined += declined_replies(epsilon, result, f"reference {number + 1}")
            for audit in audits:
                module = audit.global_model(result.weights[audit.name])
                losses[epsilon][audit.name].append(audit.losses(module))
        shutil.rmtree(split)
    result = {
        epsilon: {
            name: References(np.stack(per_model[name]), np.stack(is_in[name])) for name in per_model
        }
        for epsilon, per_model in losses.items()
    }
    return result, declined


def targets(
    audit: ModelAudit,
    federated: Mapping[float | None, Mapping[str, Mapping[str, np.ndarray]]],
    epsilons: Sequence[float],
    seed: int,
    progress: Progress,
) -> Iterator[Target]:
    """Every model to attack, trained (or loaded) one at a time."""
    centralized = [
        (CENTRALIZED, None),
        *((CENTRALIZED, epsilon) for epsilon in epsilons),
        (OVERFITTED, None),
    ]
    for training, epsilon in centralized:
        with progress.step(f"{audit.name}: target {_recipe(training, epsilon)}"):
            module = audit.train(training, epsilon, audit.is_member, seed)
        yield Target(training, epsilon, module)
    for epsilon, weights in federated.items():
        yield Target(FEDERATED, epsilon, audit.global_model(weights[audit.name]))


def centralized_references(
    audit: ModelAudit,
    training: str,
    epsilon: float | None,
    halves: ReferenceHalves,
    seed: int,
    progress: Progress,
) -> References:
    """References of one centralized recipe, reference ``j`` trained on its half of the
    attacked customers with seed ``seed + 1 + j``."""
    reference_in = halves.of(audit.customers)
    clock = SetClock(f"{audit.name}, {_recipe(training, epsilon)}", len(reference_in))
    losses = []
    for number, keep in enumerate(reference_in):
        with progress.step(clock.next()):
            module = audit.train(training, epsilon, keep, seed + 1 + number)
        clock.done()
        losses.append(audit.losses(module))
    return References(np.stack(losses), reference_in)


def attack_scores(
    losses: np.ndarray, references: References, variance: Variance
) -> dict[str, np.ndarray]:
    """Every attack's membership scores of the target's ``losses``."""
    matched = (losses, references.losses, references.is_in)
    return {
        LOSS_THRESHOLD: loss_threshold_scores(losses),
        CALIBRATED: calibrated_scores(*matched),
        LIRA_OFFLINE: lira_offline_scores(*matched, variance),
        LIRA_ONLINE: lira_online_scores(*matched, variance),
    }


def audit_model(
    audit: ModelAudit,
    federated: Mapping[float | None, Mapping[str, Mapping[str, np.ndarray]]],
    federated_refs: Mapping[float | None, Mapping[str, References]],
    epsilons: Sequence[float],
    halves: ReferenceHalves,
    seed: int,
    progress: Progress,
) -> list[Row]:
    """Every attack on every target of one model, each against references of its recipe."""
    variance = variance_for(halves.is_in.shape[0])
    rows = []
    for target in targets(audit, federated, epsilons, seed, progress):
        if target.training == FEDERATED:
            references = federated_refs[target.epsilon][audit.name]
        else:
            references = centralized_references(
                audit, target.training, target.epsilon, halves, seed, progress
            )
        scores = attack_scores(audit.losses(target.module), references, variance)
        for attack, score in scores.items():
            result = evaluate_attack(score, audit.is_member)
            rows.append(Row(audit.name, target.training, target.epsilon, attack, result))
    return rows


def conclusion(rows: Sequence[Row]) -> str:
    """The strongest attack's AUC at each ε, whether the goal holds at ε = 8, and how much
    the over-fitted models leak, from the measured numbers (z: the AUC's distance above 0.5
    in standard deviations of a signal-free attack)."""
    models = list(dict.fromkeys(row.model for row in rows))

    def strongest(model: str, keep: Callable[[Row], bool]) -> Row:
        candidates = [r for r in rows if r.model == model and keep(r)]
        return max(candidates, key=lambda r: r.result.roc_auc)

    def described(row: Row) -> str:
        return (
            f"{row.model} {row.result.roc_auc:.3f} ({row.training}, {row.attack}, "
            f"z {row.result.chance_sigmas:+.1f})"
        )

    epsilons = sorted({r.epsilon for r in rows}, key=lambda e: np.inf if e is None else e)
    per_epsilon = "; ".join(
        f"ε = {_epsilon_label(epsilon, 'none (non-private)')}: "
        + ", ".join(
            described(
                strongest(m, lambda r, e=epsilon: r.epsilon == e and r.training != OVERFITTED)
            )
            for m in models
        )
        for epsilon in epsilons
    )
    at_goal = [strongest(m, lambda r: r.epsilon == GOAL_EPSILON) for m in models]
    failing = [row.model for row in at_goal if row.result.roc_auc > GOAL_AUC]
    if failing:
        verdict = f"the goal AUC ≤ {GOAL_AUC} does not hold for {' and '.join(failing)}"
    else:
        margin = GOAL_AUC - max(row.result.roc_auc for row in at_goal)
        verdict = (
            f"the goal AUC ≤ {GOAL_AUC} holds for every model, centralized and federated, "
            f"by {margin:.3f}"
        )
    overfitted = [strongest(m, lambda r: r.training == OVERFITTED) for m in models]
    plain = {
        m: strongest(m, lambda r: r.training == CENTRALIZED and r.epsilon is None) for m in models
    }
    leaks = "; ".join(
        f"{described(row)}, TPR at {LOW_FPR:.0%} FPR {row.result.tpr_at_low_fpr:.3f} "
        f"(the non-private centralized model: {plain[row.model].result.roc_auc:.3f})"
        for row in overfitted
    )
    clear = [row.model for row in overfitted if row.result.chance_sigmas >= CLEAR_SIGMAS]
    if len(clear) == len(models):
        shown = "every over-fitted model leaks clearly, so the attacks find members that are there"
    elif clear:
        shown = f"only the {' and '.join(clear)} leaks clearly (z ≥ {CLEAR_SIGMAS:g})"
    else:
        shown = f"no over-fitted model leaks clearly (z ≥ {CLEAR_SIGMAS:g})"
    return (
        f"The strongest attack on each model, centralized or federated, reaches ROC-AUC "
        f"{per_epsilon}. At ε = {GOAL_EPSILON:g} {verdict}. The deliberately over-fitted "
        f"non-private models are attacked at {leaks}: {shown}."
    )


def markdown(
    rows: Sequence[Row],
    audits: Sequence[ModelAudit],
    *,
    command: str,
    references: int,
    rounds: int,
    seconds: float,
    declined: Sequence[str],
) -> str:
    """The BENCHMARKS.md section."""
    sections = [
        "## Membership-inference audit",
        f"Command: `{command}`; {seconds / 60:.1f} min on the shared 2-core machine.",
        protocol_text(references, rounds, variance_for(references)),
        population_table(audits),
        results_table(rows),
        conclusion(rows),
    ]
    if declined:
        shown = "; ".join(declined[:DECLINED_SHOWN])
        more = len(declined) - DECLINED_SHOWN
        sections.append(
            f"Declined or failed site replies ({len(declined)}): {shown}"
            + (f"; and {more} more." if more > 0 else ".")
        )
    return "\n\n".join(sections) + "\n"


def protocol_text(references: int, rounds: int, variance: Variance) -> str:
    """The protocol in a few sentences."""
    return (
        f"A seeded {NON_MEMBER_SHARE:.0%} of every storefront's customers are non-members: "
        "their rows are removed from every target's data. A member's attacked example is "
        "the one the model trained on for them; a non-member's is built the same way from "
        "their own rows. Targets: centralized non-private and DP (the comparison's "
        "settings), an over-fitted non-private model, and federated non-private and DP (the "
        f"main job's run config, {rounds} round(s), ε per site, the sites' real code run "
        "in-process; attacked through the final global weights). Every target is attacked "
        f"with {references} reference models trained with its own recipe (DP at its ε with "
        "the same settings, non-private, over-fitted, or federated with its run config on "
        "the storefronts of the reference's customers), each on a seeded half of all "
        f"customers, so every attacked customer is IN {references // 2} of them and OUT of "
        "the others (a federated churn reference is OUT for the customers its sites hold "
        "out); one set per model and recipe serves all its targets. Attacks: the loss "
        "threshold (score = −loss; Yeom et al. 2018); the calibrated loss (score = −(loss − "
        "the example's mean loss under its OUT references)); and LiRA (Carlini et al. 2022) "
        "on the logit-scaled confidence φ = log(p / (1 − p)), p = exp(−loss) (the churn "
        "model's logit of the true label; ≈ −loss for the recommender), offline (one-sided: "
        "log Pr[Z ≤ φ], Z ~ N(μ_out, σ²_out) fitted to the OUT references) and online "
        "(log N(φ; μ_in, σ²_in) − log N(φ; μ_out, σ²_out)), with per-example means and "
        f"{_variance_text(variance)}. ε: the target ε (—: non-private). Without any "
        "membership signal the AUC scatters around 0.5 with the SD below (Mann-Whitney: "
        "sqrt((m + n + 1) / (12 m n))); z is an AUC's distance above 0.5 in those SDs."
    )


def _variance_text(variance: Variance) -> str:
    if variance == "global":
        return (
            "one global variance per side pooled over the examples' within-example "
            "spreads (few references: Carlini et al.'s fixed variance)"
        )
    return "a variance per example and side"


def population_table(audits: Sequence[ModelAudit]) -> str:
    """Members and non-members attacked per model, and the AUC's spread without signal."""
    lines = [
        "| model | attacked example | members m | non-members n | AUC SD without signal |",
        "|---|---|---:|---:|---:|",
    ]
    for audit in audits:
        members, non_members = int(audit.is_member.sum()), int((~audit.is_member).sum())
        lines.append(
            f"| {audit.name} | {audit.example} | {members:,} | {non_members:,} "
            f"| {chance_auc_std(members, non_members):.3f} |"
        )
    return "\n".join(lines)


def results_table(rows: Sequence[Row]) -> str:
    """One line per model, target and attack."""
    lines = [
        f"| model | training | ε | attack | ROC-AUC | z | TPR at {LOW_FPR:.0%} FPR |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r.model} | {r.training} | {_epsilon_label(r.epsilon, '—')} | {r.attack} "
        f"| {r.result.roc_auc:.3f} | {r.result.chance_sigmas:+.1f} "
        f"| {r.result.tpr_at_low_fpr:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)


def strongest_attacks(rows: Sequence[Row], command: str) -> dict[str, Any]:
    """Per model and ε: the strongest attack on any target trained that way (centralized or
    federated, the over-fitted models aside) — what :mod:`simulations.privacy_report` puts
    beside the ε a site spent (``simulations/data/membership-audit.json``)."""
    best: dict[tuple[str, float | None], Row] = {}
    for row in rows:
        key = (row.model, row.epsilon)
        if row.training != OVERFITTED and (
            key not in best or row.result.roc_auc > best[key].result.roc_auc
        ):
            best[key] = row
    return {
        "command": command,
        "strongest": [
            {
                "model": model,
                "epsilon": epsilon,
                "training": row.training,
                "attack": row.attack,
                "roc-auc": round(row.result.roc_auc, 4),
                "tpr-at-low-fpr": round(row.result.tpr_at_low_fpr, 4),
                "low-fpr": LOW_FPR,
            }
            for (model, epsilon), row in best.items()
        ],
    }


def _epsilon_label(epsilon: float | None, plain: str = "none") -> str:
    return plain if epsilon is None else f"{epsilon:g}"


def _recipe(training: str, epsilon: float | None) -> str:
    return f"{training} {'non-private' if epsilon is None else f'DP ε {epsilon:g}'}"


def main(argv: list[str] | None = None) -> int:
    """Train every target and its references, attack it and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a few epochs, ε {', '.join(f'{e:g}' for e in QUICK_EPSILONS)} only (smoke run)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the draw and the training")
    parser.add_argument(
        "--references",
        type=int,
        default=None,
        help=f"reference models per model and recipe, even (default {REFERENCES}; "
        f"{QUICK_REFERENCES} with --quick)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="also write the strongest attack per model and ε there (as JSON)",
    )
    args = parser.parse_args(argv)
    references = args.references or (QUICK_REFERENCES if args.quick else REFERENCES)
    if references < 4 or references % 2:
        # online LiRA needs two IN and two OUT references for its variances
        parser.error(f"--references must be an even number >= 4, got {references}")
    epsilons = QUICK_EPSILONS if args.quick else EPSILONS
    logging.getLogger("flwr").propagate = False
    # One thread: these small models gain nothing from a second one on a shared 2-core box.
    torch.set_num_threads(1)
    progress = Progress(prog="membership")
    began = time.perf_counter()
    frame = assign_storefronts(ingest_bundled(progress))
    non_members = non_member_customers(frame, NON_MEMBER_SHARE, args.seed)
    member_frame = frame[~frame[schema.CUSTOMER].isin(non_members)]
    with progress.step("attacked examples of both models"):
        audits: list[ModelAudit] = [
            RecommenderAudit(frame, non_members, args.quick),
            ChurnAudit(frame, member_frame, non_members, args.quick),
        ]
    halves = ReferenceHalves.draw(frame, references, args.seed)
    with tempfile.TemporaryDirectory(prefix="membership-") as temporary:
        facts = {audit.name: audit.facts for audit in audits}
        federation = Federation(Path(temporary), facts, epsilons, args.quick)
        federated, declined = federated_weights(member_frame, federation, progress)
        federated_refs, reference_declined = federated_references(
            frame, audits, federation, halves, args.seed, progress
        )
    rows = [
        row
        for audit in audits
        for row in audit_model(
            audit, federated, federated_refs, epsilons, halves, args.seed, progress
        )
    ]
    command = " ".join(
        ["python -m lab.benchmarks.membership", *(sys.argv[1:] if argv is None else argv)]
    )
    print(
        markdown(
            rows,
            audits,
            command=command,
            references=references,
            rounds=federation.rounds,
            seconds=time.perf_counter() - began,
            declined=[*declined, *reference_declined],
        ),
        end="",
    )
    if args.json is not None:
        summary = json.dumps(strongest_attacks(rows, command), indent=2) + "\n"
        atomic_write(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
