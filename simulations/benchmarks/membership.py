"""Benchmark: membership inference against both models, without and with DP, centralized
and federated.

Run ``python -m simulations.benchmarks.membership`` (``--quick`` for a smoke run of a few
epochs); it prints a Markdown section for BENCHMARKS.md. Progress goes to stderr; stdout
is only the Markdown.

Population: the bundled data (ingested under a throwaway key), split into storefronts. A
seeded half of the customers of every storefront are **non-members** (chosen by a seeded
hash of each customer's first invoice, so the draw does not depend on the key): all their
rows are removed from the data of every target model. The attacked example of a customer
is the one training example a model sees for them (user-level DP's unit):

- recommender: :class:`models.nextbasket_features.TrainingExamples` with
  ``target_window=1`` — the history before the customer's last training invoice, with that
  invoice as the target basket (customers with at least two training invoices);
- churn: the customer's nine features and label at the cutoff; the members attacked are
  those the churn protocol trains on (its fixed 20 % holdout is not attacked).

A non-member's example is built the same way from their own rows. Every model shares one
catalogue (the whole data's) and one churn cutoff, as the federation's shared facts.

Targets per model: centralized non-private and DP at ε = 1, 3, 8 with the comparison's
settings (:mod:`simulations.compare`); a deliberately over-fitted non-private model; and
federated non-private and DP at ε = 1, 3, 8 on the member-only storefronts with the main
job's run configs (:mod:`simulations.run_configs`), trained by
:func:`simulations.sequential.run_sequential_federation` (the sites' real code) and
attacked through its final global weights.

Attacks (:mod:`simulations.membership_attack`): the loss threshold (Yeom et al. 2018) and
the calibrated loss, against ``--references`` non-private reference models (centralized
plain settings), each trained on half of all attacked customers, members and non-members
alike; the same reference models serve every target of a model.
"""

from __future__ import annotations

import argparse
import logging
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

from models import schema
from models.churn import CUTOFF, churn_dataset, per_example_loss, train_centralized
from models.churn_protocol import churn_data, holdout_mask
from models.nextbasket_features import TrainingExamples, build_histories, collate_examples
from models.nextbasket_protocol import catalogue_of, split_next_basket
from models.recommender import CATALOGUE, NextBasketRecommender, basket_loss
from models.registry import Facts, get_model
from models.training import TrainingSettings
from simulations.compare import (
    QUICK_EPOCHS,
    centralized_dp_plan,
    centralized_dp_settings,
    fit_churn,
    fit_recommender,
    ingest_bundled,
    non_private_settings,
    quick_settings,
)
from simulations.membership_attack import (
    LOW_FPR,
    AttackResult,
    calibrated_scores,
    chance_auc_std,
    evaluate_attack,
    loss_threshold_scores,
    reference_membership,
)
from simulations.progress import Progress
from simulations.run_configs import (
    MAIN_RUN_CONFIG,
    PLAIN_RUN_CONFIG,
    PLAIN_SITE_POLICY,
    QUICK_OVERRIDES,
)
from simulations.sequential import run_sequential_federation
from simulations.settings_per_epsilon import NON_PRIVATE, federated_run_config
from simulations.site_policies import apply_site_policy
from simulations.storefronts import assign_storefronts, prepare_storefronts

EPSILONS: tuple[float, ...] = (1.0, 3.0, 8.0)
"""Target ε of the DP models, centralized and per site."""
GOAL_EPSILON = 8.0
GOAL_AUC = 0.55
"""The audit's goal: no attack beats ROC-AUC 0.55 at ε = 8."""
NON_MEMBER_SHARE = 0.5
"""Share of each storefront's customers left out of every target's data."""
REFERENCES = 4
QUICK_REFERENCES = 2

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
CLEAR_SIGMAS = 3.0
"""An AUC this many standard deviations of a signal-free attack above 0.5 is a clear leak."""
LOSS_THRESHOLD = "loss threshold"
CALIBRATED = "calibrated loss"


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
    def train_private(self, epsilon: float, seed: int) -> nn.Module:
        """A model trained with DP-SGD at ``epsilon`` on the members (centralized settings)."""

    @abstractmethod
    def train_overfitted(self, seed: int) -> nn.Module:
        """A model over-fitted on the members on purpose, without DP."""

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

    def _examples(self, keep: np.ndarray, target_window: int | None = 1) -> TrainingExamples:
        histories = {c: self.histories[c] for c in self.customers[keep]}
        return TrainingExamples(histories, target_window=target_window)

    def train_plain(self, keep: np.ndarray, seed: int) -> nn.Module:
        """The comparison's centralized non-private settings on the kept customers."""
        entry = non_private_settings(self.name)
        settings = quick_settings(entry.training(), self.quick)
        examples = self._examples(keep, entry.target_window())
        return fit_recommender(len(self.facts[CATALOGUE]), examples, settings, seed)[0]

    def train_private(self, epsilon: float, seed: int) -> nn.Module:
        """The comparison's DP settings for ``epsilon``, σ for one centralized plan."""
        entry = centralized_dp_settings(self.name, epsilon)
        settings = quick_settings(entry.training(), self.quick)
        members = self._examples(self.is_member, entry.target_window())
        plan = centralized_dp_plan(epsilon, len(members), self.delta_customers, settings)
        num_items = len(self.facts[CATALOGUE])
        return fit_recommender(num_items, members, settings, seed, plan.noise_multiplier)[0]

    def train_overfitted(self, seed: int) -> nn.Module:
        """:data:`OVERFIT_RECOMMENDER` with :data:`OVERFIT_RECOMMENDER_HIDDEN`."""
        settings = quick_settings(OVERFIT_RECOMMENDER, self.quick)
        members = self._examples(self.is_member)
        num_items = len(self.facts[CATALOGUE])
        return fit_recommender(
            num_items,
            members,
            settings,
            seed,
            build=partial(NextBasketRecommender, hidden=OVERFIT_RECOMMENDER_HIDDEN),
        )[0]


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
        self.tensors = churn_dataset(self.data).tensors

    def losses(self, module: nn.Module) -> np.ndarray:
        """Per-example :func:`models.churn.per_example_loss`."""
        module.eval()
        with torch.no_grad():
            return per_example_loss(module, self.tensors).double().numpy()

    def train_plain(self, keep: np.ndarray, seed: int) -> nn.Module:
        """The centralized reference recipe (:func:`models.churn.train_centralized`)."""
        return train_centralized(self.data.subset(keep), seed=seed)

    def train_private(self, epsilon: float, seed: int) -> nn.Module:
        """The comparison's DP settings for ``epsilon``, σ for one centralized plan."""
        settings = quick_settings(
            centralized_dp_settings(self.name, epsilon).training(), self.quick
        )
        members = self.data.subset(self.is_member)
        customers = len(members.labels)
        plan = centralized_dp_plan(epsilon, customers, customers, settings)
        return fit_churn(members, settings, seed, plan.noise_multiplier)[0]

    def train_overfitted(self, seed: int) -> nn.Module:
        """Full-batch Adam, :data:`OVERFIT_CHURN_HIDDEN_UNITS` wide, no weight decay."""
        return train_centralized(
            self.data.subset(self.is_member),
            seed=seed,
            hidden_units=OVERFIT_CHURN_HIDDEN_UNITS,
            epochs=QUICK_EPOCHS if self.quick else OVERFIT_CHURN_EPOCHS,
            weight_decay=0.0,
        )


def non_member_customers(frame: pd.DataFrame, share: float, seed: int) -> pd.Index:
    """A seeded ``share`` of every storefront's customers, drawn by the churn protocol's
    stratified hash (:func:`models.churn_protocol.holdout_mask`) over each customer's first
    invoice id, so the draw is the same under every pseudonymisation key."""
    per_customer = frame.groupby(schema.CUSTOMER)
    storefront = per_customer[schema.STOREFRONT].first()
    anchors = per_customer[schema.ORDER].min()
    labels = pd.Series(0, index=storefront.index)
    drawn = holdout_mask(storefront, labels, anchors, fraction=share, seed=seed)
    return drawn.index[drawn.to_numpy()]


def federated_weights(
    member_frame: pd.DataFrame,
    work: Path,
    facts: Mapping[str, Facts],
    epsilons: Sequence[float],
    quick: bool,
    progress: Progress,
) -> tuple[dict[float | None, dict[str, dict[str, np.ndarray]]], list[str]]:
    """Federated training of both models on the member-only storefronts: non-private
    (:data:`PLAIN_RUN_CONFIG` with the non-private federated settings) and at each ε
    (:data:`MAIN_RUN_CONFIG`).

    Returns:
        Per ε (``None``: non-private), the final global weights per model; and every
        declined or failed site reply.
    """
    split = work / "storefronts"
    with progress.step(f"write the member-only storefront split to {split}"):
        prepare_storefronts(member_frame, split)
    catalogue_file = work / "catalogue.txt"
    catalogue_file.write_text("\n".join(facts["recommender"][CATALOGUE]) + "\n")
    shared = {
        f"recommender.{CATALOGUE}": str(catalogue_file),
        f"churn.{CUTOFF}": facts["churn"][CUTOFF],
        **(QUICK_OVERRIDES if quick else {}),
    }
    plain = federated_run_config(list(facts), NON_PRIVATE)
    configs: dict[float | None, dict[str, Any]] = {None: {**PLAIN_RUN_CONFIG, **plain}}
    configs.update({epsilon: {**MAIN_RUN_CONFIG, "epsilon": epsilon} for epsilon in epsilons})
    weights, declined = {}, []
    for epsilon, config in configs.items():
        label = _epsilon_label(epsilon)
        with progress.step(f"federated training, ε {label}"):
            run_dir = work / f"federated-eps-{label}"
            # the non-private baseline needs sites whose policy lets DP be off
            policy = PLAIN_SITE_POLICY if epsilon is None else []
            apply_site_policy(split, run_dir, policy, set_by="membership audit")
            result = run_sequential_federation(
                split, run_dir, {**config, **shared}, progress=progress
            )
        weights[epsilon] = result.weights
        declined += [
            f"ε {label} {m} round {line}" for m, ls in result.declined.items() for line in ls
        ]
    return weights, declined


def targets(
    audit: ModelAudit,
    federated: Mapping[float | None, Mapping[str, Mapping[str, np.ndarray]]],
    epsilons: Sequence[float],
    seed: int,
    progress: Progress,
) -> Iterator[Target]:
    """Every model to attack, trained (or loaded) one at a time."""
    with progress.step(f"{audit.name}: centralized non-private"):
        module = audit.train_plain(audit.is_member, seed)
    yield Target(CENTRALIZED, None, module)
    for epsilon in epsilons:
        with progress.step(f"{audit.name}: centralized DP at ε {epsilon:g}"):
            module = audit.train_private(epsilon, seed)
        yield Target(CENTRALIZED, epsilon, module)
    with progress.step(f"{audit.name}: over-fitted"):
        module = audit.train_overfitted(seed)
    yield Target(OVERFITTED, None, module)
    for epsilon, weights in federated.items():
        yield Target(FEDERATED, epsilon, audit.global_model(weights[audit.name]))


def reference_losses(
    audit: ModelAudit, references: int, seed: int, progress: Progress
) -> tuple[np.ndarray, np.ndarray]:
    """``(references, n)`` losses of reference models each trained on half of the attacked
    customers, and which customers each trained on."""
    reference_in = reference_membership(len(audit.customers), references, seed)
    losses = []
    for number, keep in enumerate(reference_in):
        with progress.step(f"{audit.name}: reference model {number + 1}/{references}"):
            losses.append(audit.losses(audit.train_plain(keep, seed + 1 + number)))
    return np.stack(losses), reference_in


def audit_model(
    audit: ModelAudit,
    federated: Mapping[float | None, Mapping[str, Mapping[str, np.ndarray]]],
    epsilons: Sequence[float],
    references: int,
    seed: int,
    progress: Progress,
) -> list[Row]:
    """Both attacks on every target of one model."""
    out_losses, reference_in = reference_losses(audit, references, seed, progress)
    rows = []
    for target in targets(audit, federated, epsilons, seed, progress):
        losses = audit.losses(target.module)
        attacks = {
            LOSS_THRESHOLD: loss_threshold_scores(losses),
            CALIBRATED: calibrated_scores(losses, out_losses, reference_in),
        }
        for attack, scores in attacks.items():
            result = evaluate_attack(scores, audit.is_member)
            rows.append(Row(audit.name, target.training, target.epsilon, attack, result))
    return rows


def conclusion(rows: Sequence[Row]) -> str:
    """Whether the goal holds at ε = 8, and how much the over-fitted models leak, from
    the measured numbers (z: the AUC's distance above 0.5 in standard deviations of a
    signal-free attack)."""
    models = list(dict.fromkeys(row.model for row in rows))

    def strongest(model: str, keep: Callable[[Row], bool]) -> Row:
        candidates = [r for r in rows if r.model == model and keep(r)]
        return max(candidates, key=lambda r: r.result.roc_auc)

    def described(row: Row) -> str:
        return (
            f"{row.model} {row.result.roc_auc:.3f} ({row.training}, {row.attack}, "
            f"z {row.result.chance_sigmas:+.1f})"
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
        f"At ε = {GOAL_EPSILON:g} the strongest attacks reach ROC-AUC "
        f"{'; '.join(described(row) for row in at_goal)}: {verdict}. The deliberately "
        f"over-fitted non-private models are attacked at {leaks}: {shown}."
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
        protocol_text(references, rounds),
        population_table(audits),
        results_table(rows),
        conclusion(rows),
    ]
    if declined:
        sections.append("Declined or failed site replies: " + "; ".join(declined) + ".")
    return "\n\n".join(sections) + "\n"


def protocol_text(references: int, rounds: int) -> str:
    """The protocol in a few sentences."""
    return (
        f"A seeded {NON_MEMBER_SHARE:.0%} of every storefront's customers are non-members: "
        "their rows are removed from every target's data. A member's attacked example is "
        "the one the model trained on for them; a non-member's is built the same way from "
        "their own rows. Targets: centralized non-private and DP (the comparison's "
        "settings), an over-fitted non-private model, and federated non-private and DP (the "
        f"main job's run config, {rounds} round(s), ε per site, the sites' real code run "
        "in-process; attacked through the final global weights). Attacks: the loss "
        "threshold (score = −loss; Yeom et al. 2018) and the calibrated loss (score = "
        "−(loss − the example's mean loss under the reference models that did not train on "
        f"it); {references} non-private reference models, every attacked customer in "
        f"exactly {references // 2} of them). ε: the target ε (—: non-private). Without any "
        "membership signal the AUC scatters around 0.5 with the SD below (Mann-Whitney: "
        "sqrt((m + n + 1) / (12 m n))); z is an AUC's distance above 0.5 in those SDs."
    )


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
        f"| model | training | ε | attack | ROC-AUC | TPR at {LOW_FPR:.0%} FPR |",
        "|---|---|---:|---|---:|---:|",
    ]
    lines += [
        f"| {r.model} | {r.training} | {_epsilon_label(r.epsilon, '—')} | {r.attack} "
        f"| {r.result.roc_auc:.3f} | {r.result.tpr_at_low_fpr:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)


def _epsilon_label(epsilon: float | None, plain: str = "none") -> str:
    return plain if epsilon is None else f"{epsilon:g}"


def main(argv: list[str] | None = None) -> int:
    """Train every target, attack it and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few epochs only (smoke run)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the draw and the training")
    parser.add_argument(
        "--references",
        type=int,
        default=None,
        help=f"reference models, even (default {REFERENCES}; {QUICK_REFERENCES} with --quick)",
    )
    args = parser.parse_args(argv)
    references = args.references or (QUICK_REFERENCES if args.quick else REFERENCES)
    if references < 2 or references % 2:
        parser.error(f"--references must be an even number >= 2, got {references}")
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
    with tempfile.TemporaryDirectory(prefix="membership-") as temporary:
        facts = {audit.name: audit.facts for audit in audits}
        federated, declined = federated_weights(
            member_frame, Path(temporary), facts, EPSILONS, args.quick, progress
        )
    rows = [
        row
        for audit in audits
        for row in audit_model(audit, federated, EPSILONS, references, args.seed, progress)
    ]
    command = " ".join(
        ["python -m simulations.benchmarks.membership", *(sys.argv[1:] if argv is None else argv)]
    )
    print(
        markdown(
            rows,
            audits,
            command=command,
            references=references,
            rounds=(QUICK_OVERRIDES if args.quick else MAIN_RUN_CONFIG)["num-server-rounds"],
            seconds=time.perf_counter() - began,
            declined=declined,
        ),
        end="",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
