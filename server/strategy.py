"""Server strategies: Flower's FedAvg / FedProx / FedAdam with update screening and robust means.

Each round's train replies go through three stages, in this order:

1. **Screening** (:class:`ValidatedAggregation`): error replies are logged (declined
   sites with their reason code, failures separately); each content reply is checked
   by :func:`server.update_validation.validate_updates`, its norm judged per unit of
   the local training the round's train config asked of a site of its size
   (:class:`server.update_validation.RoundPlan`); every rejection is logged with the
   node id and storefront. If fewer than ``min_accepted`` updates survive,
   the round keeps the previous global model and says so.
2. **Aggregation rule** (:class:`RobustAggregation`): weighted FedAvg over
   ``num-examples`` (McMahan et al. 2017), coordinate-wise trimmed mean or
   coordinate-wise median (Yin et al. 2018; both unweighted, as in the paper).
3. **Server optimizer**: none (FedAvg, FedProx — whose proximal term is applied by the
   clients from ``proximal-mu`` in the train config, Li et al. 2020) or Adam on the
   pseudo-gradient (FedAdam, Reddi et al. 2021), reusing Flower's classes.

Rounds are numbered absolutely: after a resume the strategy is started with
``num_rounds = total - done`` and ``round_offset = done``; clients then see the
absolute ``server-round`` and FedAdam's bias correction continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore import log

from common import wire
from common.wire_encoding import FLOAT32, INT8, check_encoding, decode_int8, encode_int8
from server import progress
from server.progress import RoundEvent
from server.update_validation import (
    Rejection,
    RoundPlan,
    SiteUpdate,
    ValidationPolicy,
    validate_updates,
)

AGGREGATIONS = ("weighted-mean", "trimmed-mean", "median")
SERVER_OPTIMIZERS = ("fedavg", "fedprox", "fedadam")
EVALUATION_ROUNDS = ("last", "all")
"""Run-config ``evaluation-rounds``: evaluate after the last round only (every site's
evaluation ε goes to the final model's estimate), or after every round (shared among
them: each estimate noisier)."""


def planned_evaluations(evaluation_rounds: str, total_rounds: int) -> int:
    """How many evaluations of a model a run of ``total_rounds`` rounds plans.

    Raises:
        ValueError: an ``evaluation-rounds`` other than :data:`EVALUATION_ROUNDS`.
    """
    if evaluation_rounds not in EVALUATION_ROUNDS:
        raise ValueError(
            f"evaluation-rounds must be one of {EVALUATION_ROUNDS}, got {evaluation_rounds!r}"
        )
    return total_rounds if evaluation_rounds == "all" else 1


@dataclass
class RoundReport:
    """What happened to each site's reply in one training round."""

    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept_previous_model: bool = False
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per storefront: the epsilon, delta, dp-steps and noise multiplier its reply
    reported, and its privacy note if it planned the request down."""
    suppressed: list[str] = field(default_factory=list)
    """Storefronts whose evaluation was suppressed (fewer customers than their minimum
    cohort), with the reason; their numbers are in no metric."""
    evaluation_refused: list[str] = field(default_factory=list)
    """Other refusals of the round's evaluation, with the reason."""
    train_metrics: dict[str, Any] = field(default_factory=dict)
    evaluate_metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form for the run's per-round log."""
        return {
            "accepted": self.accepted,
            "rejected": [vars(r) for r in self.rejected],
            "declined": self.declined,
            "failed": self.failed,
            "kept-previous-model": self.kept_previous_model,
            "privacy": self.privacy,
            "suppressed": self.suppressed,
            "evaluation-refused": self.evaluation_refused,
            "train-metrics": self.train_metrics,
            "evaluate-metrics": self.evaluate_metrics,
        }


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Summarise accepted train replies: sites, customers, worst-case privacy."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    return MetricRecord(
        {
            "num-sites": len(metrics),
            wire.NUM_EXAMPLES: int(sum(float(m[weighted_by_key]) for m in metrics)),
            "max-epsilon": max(float(m[wire.EPSILON]) for m in metrics),
            "max-delta": max(float(m[wire.DELTA]) for m in metrics),
            "max-dp-steps": max(int(m[wire.DP_STEPS]) for m in metrics),
        }
    )


class RobustAggregation(FedAvg):
    """FedAvg whose array aggregation is weighted mean, trimmed mean or median.

    Its ``aggregate_train`` expects replies already screened by
    :class:`ValidatedAggregation` (same keys, shapes and dtypes).
    """

    aggregation: str = "weighted-mean"
    trim_fraction: float = 0.2

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate screened replies with the configured rule."""
        contents = [msg.content for msg in replies]
        if not contents:
            return None, None
        if self.aggregation == "weighted-mean":
            arrays = aggregate_arrayrecords(contents, self.weighted_by_key)
        else:
            stacked = {
                key: np.stack([c[wire.ARRAYS][key].numpy() for c in contents])
                for key in contents[0][wire.ARRAYS].keys()
            }
            if self.aggregation == "trimmed-mean":
                combined = {k: trim_mean(v, self.trim_fraction) for k, v in stacked.items()}
            else:
                combined = {k: np.median(v, axis=0) for k, v in stacked.items()}
            arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in combined.items()})
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)


class ValidatedAggregation(FedAvg):
    """Screens train replies before the rest of the strategy sees them.

    Put it first in the bases so its ``configure_train``/``aggregate_train`` wrap the
    Flower strategy's (see :class:`ScreenedFedAvg` and friends).
    """

    def setup(
        self,
        *,
        policy: ValidationPolicy,
        min_accepted: int,
        aggregation: str,
        trim_fraction: float,
        round_offset: int = 0,
        update_encoding: str = FLOAT32,
        evaluation_rounds: str = "all",
    ) -> None:
        """Set the screening and aggregation options (called once by :func:`build_strategy`)."""
        check_encoding(update_encoding)
        planned_evaluations(evaluation_rounds, 1)  # refuse an unknown schedule
        self.evaluation_rounds = evaluation_rounds
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if min_accepted < 1:
            raise ValueError(f"min_accepted must be >= 1, got {min_accepted}")
        self.policy = policy
        self.min_accepted = min_accepted
        self.aggregation = aggregation
        self.trim_fraction = trim_fraction
        self.round_offset = round_offset
        self.update_encoding = update_encoding
        self.round_reports: dict[int, RoundReport] = {}
        self._facts_digest = ""
        self._packed_facts = b""
        """The model's shared facts, packed once per run (see :meth:`share_facts`)."""
        self._nodes_holding_facts: set[int] = set()
        self.model_name = ""
        self.total_rounds = 0
        """For progress lines: the model trained and the run's rounds (absolute)."""
        self.storefront_of_node: dict[int, str] = {}
        self._global_weights: dict[str, np.ndarray] = {}
        self._round_plan: RoundPlan | None = None
        self._sent_train: list[Message] = []
        self._sent_evaluate: list[Message] = []

    def share_facts(self, facts: dict[str, Any]) -> None:
        """Send ``facts`` with this model's messages: in full to a node until it has answered
        a message that carried them, then only their digest (:data:`common.wire.FACTS`)."""
        self._facts_digest = wire.facts_digest(facts) if facts else ""
        self._packed_facts = wire.pack_facts(facts) if facts else b""
        self._nodes_holding_facts = set()

    def summary(self) -> None:
        """Log the screening settings, then Flower's summary."""
        log(INFO, "\t├──> Update screening: %s, min accepted %d", self.policy, self.min_accepted)
        log(INFO, "\t├──> Aggregation rule: %s", self.aggregation)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global weights and plan sent this round; number the round absolutely."""
        self._global_weights = {k: v.numpy() for k, v in arrays.items()}
        self._round_plan = RoundPlan.from_train_config(config, self._global_weights)
        if self._round_plan is None:
            log(
                INFO,
                "Train config has no full training plan: screening compares plain update norms",
            )
        config[wire.ROUND_OFFSET] = self.round_offset
        config[wire.UPDATE_ENCODING] = self.update_encoding
        # Kept so replies can be traced to their node: the Grid sets each message's id in
        # place when it pushes it (see _replying_node).
        absolute_round = server_round + self.round_offset
        self._sent_train = self._with_facts(
            super().configure_train(absolute_round, arrays, config, grid)
        )
        if self.update_encoding != FLOAT32:
            sent_arrays = training_arrays(self._global_weights, self.update_encoding)
            for msg in self._sent_train:
                msg.content[wire.ARRAYS] = sent_arrays
        self._report_stage(absolute_round, "training", len(self._sent_train))
        return self._sent_train

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Number evaluation rounds absolutely, like training rounds; with
        ``evaluation-rounds = "last"`` evaluate after the run's last round only."""
        absolute_round = server_round + self.round_offset
        if self.evaluation_rounds == "last" and absolute_round < self.total_rounds:
            self._sent_evaluate = []
            return []
        messages = self._with_facts(
            super().configure_evaluate(absolute_round, arrays, config, grid)
        )
        self._sent_evaluate = messages
        if messages:
            self._report_stage(absolute_round, "evaluating", len(messages))
        return messages

    def _report_stage(self, absolute_round: int, stage: str, sites: int) -> None:
        event = RoundEvent(self.model_name, absolute_round, self.total_rounds, stage, sites)
        progress.report(event)

    def _with_facts(self, messages: Iterable[Message]) -> list[Message]:
        """``messages`` carrying the shared facts in their own record (not in the config,
        which Flower logs): in full to nodes not yet known to hold them, else the digest."""
        messages = list(messages)
        if self._facts_digest:
            digest_only = facts_record(self._facts_digest)
            in_full = facts_record(self._facts_digest, self._packed_facts)
            for msg in messages:
                holds = msg.metadata.dst_node_id in self._nodes_holding_facts
                # Flower's strategies give all messages of a round one content object.
                content = RecordDict(dict(msg.content))
                content[wire.FACTS] = digest_only if holds else in_full
                msg.content = content
        return messages

    def _note_facts_held(self, node_id: int, msg: Message) -> None:
        """A node that answered holds the facts (it keeps those it received); one that says
        it does not gets them in full next time."""
        if not msg.has_error():
            self._nodes_holding_facts.add(node_id)
        elif msg.error.code == wire.FACTS_UNKNOWN:
            self._nodes_holding_facts.discard(node_id)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen replies, then aggregate the accepted ones (or keep the previous model)."""
        absolute_round = server_round + self.round_offset
        report = RoundReport()
        self.round_reports[absolute_round] = report
        updates: list[SiteUpdate] = []
        answered: set[int] = set()
        for msg in replies:
            node_id = self._replying_node(msg, self._sent_train)
            answered.add(node_id)
            self._note_facts_held(node_id, msg)
            site = self.storefront_of_node.get(node_id, "unknown storefront")
            if msg.has_error():
                self._log_error_reply(report, node_id, site, msg)
                continue
            update, rejection = _site_update(msg, self._reply_weights)
            if rejection is not None:
                report.rejected.append(rejection)
            else:
                self.storefront_of_node[node_id] = update.storefront
                report.privacy[update.storefront] = site_privacy_record(
                    update.metrics, update.privacy_note
                )
                updates.append(update)
        self._record_silent_nodes(report, answered)
        accepted, rejections = validate_updates(
            self._global_weights, updates, self.policy, self._round_plan
        )
        report.rejected.extend(rejections)
        report.accepted = [u.storefront for u in accepted]
        for rejection in report.rejected:
            log(WARNING, "Round %d: rejected update: %s", absolute_round, rejection)
        log(
            INFO,
            "Round %d: %d updates accepted, %d rejected, %d declined, %d failed",
            absolute_round,
            len(report.accepted),
            len(report.rejected),
            len(report.declined),
            len(report.failed),
        )
        if len(accepted) < self.min_accepted:
            report.kept_previous_model = True
            log(
                WARNING,
                "Round %d: only %d accepted updates (minimum %d); keeping the previous "
                "global model",
                absolute_round,
                len(accepted),
                self.min_accepted,
            )
            return None, None
        arrays, metrics = super().aggregate_train(absolute_round, [u.reply for u in accepted])
        report.train_metrics = dict(metrics or {})
        if arrays is None:
            return None, metrics
        # Keep the global dtypes stable (Adam's float64 scalars would otherwise upcast),
        # so next round's dtype check compares like with like.
        arrays = ArrayRecord(
            {
                k: Array(np.asarray(v.numpy(), dtype=self._global_weights[k].dtype))
                for k, v in arrays.items()
            }
        )
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate evaluation replies under the absolute round number, and record them,
        with every suppressed or refused evaluation by storefront."""
        absolute_round = server_round + self.round_offset
        replies = list(replies)
        if not self._sent_evaluate:  # no evaluation this round (evaluation-rounds = "last")
            return None
        report = self.round_reports.setdefault(absolute_round, RoundReport())
        for msg in replies:
            self._note_facts_held(self._replying_node(msg, self._sent_evaluate), msg)
            if not msg.has_error():
                _note_evaluation_privacy(report, msg)
            if msg.has_error():
                reason = msg.error.reason or f"error {msg.error.code}"
                refusals = (
                    report.suppressed
                    if msg.error.code == wire.SUPPRESSED
                    else (report.evaluation_refused)
                )
                refusals.append(reason)
                log(INFO, "Round %d evaluation: %s", absolute_round, reason)
        metrics = super().aggregate_evaluate(absolute_round, replies)
        report.evaluate_metrics = dict(metrics or {})
        return metrics

    def _reply_weights(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return trained_weights(arrays, self._global_weights, self.update_encoding)

    def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Server-optimizer state to checkpoint (FedAdam moments); empty for plain averaging."""
        return {
            name: dict(getattr(self, name)) for name in ("m_t", "v_t") if getattr(self, name, None)
        }

    def load_optimizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore what :meth:`optimizer_state` returned."""
        for name, arrays in state.items():
            if name not in ("m_t", "v_t") or not hasattr(self, name):
                raise ValueError(f"{type(self).__name__} has no optimizer state {name!r}")
            setattr(self, name, {k: np.asarray(v) for k, v in arrays.items()})

    @staticmethod
    def _replying_node(msg: Message, sent_messages: list[Message]) -> int:
        """The node a reply (to one of ``sent_messages``) answers for. When a node stops
        sending heartbeats (killed, unplugged), the SuperLink replies in its place with error
        NODE_UNAVAILABLE from its own id (SUPERLINK_NODE_ID); the message it answers names
        the node that went away."""
        for sent in sent_messages:
            if (
                sent.metadata.message_id
                and sent.metadata.message_id == msg.metadata.reply_to_message_id
            ):
                return sent.metadata.dst_node_id
        return msg.metadata.src_node_id

    def _record_silent_nodes(self, report: RoundReport, answered: set[int]) -> None:
        """Count as failed every node sent a train message that did not answer before the
        round timeout (e.g. still training, or gone before the SuperLink noticed)."""
        for sent in self._sent_train:
            node_id = sent.metadata.dst_node_id
            if node_id not in answered:
                site = self.storefront_of_node.get(node_id, "unknown storefront")
                report.failed.append(f"node {node_id} ({site}): no reply within the round timeout")
                log(WARNING, "Node %d (%s) did not reply within the round timeout", node_id, site)

    def _log_error_reply(self, report: RoundReport, node_id: int, site: str, msg: Message) -> None:
        reason = msg.error.reason or ""
        site = wire.storefront_of_reason(reason) or site
        if msg.error.code in wire.DECLINE_REASONS:
            report.declined.append(f"node {node_id} ({site}): {reason}")
            log(INFO, "Node %d (%s) declined the round: %s", node_id, site, reason)
        else:
            report.failed.append(f"node {node_id} ({site}): error {msg.error.code}")
            log(WARNING, "Node %d (%s) failed: error %d %s", node_id, site, msg.error.code, reason)


def _note_evaluation_privacy(report: RoundReport, msg: Message) -> None:
    """A site's evaluate reply says what it has spent since its train reply: its cumulative
    ε after the release, and the ε of the run's evaluation releases alone."""
    site = msg.content.config_records.get(wire.SITE)
    metrics = msg.content.metric_records.get(wire.METRICS)
    if site is None or metrics is None or wire.EPSILON not in metrics:
        return
    record = report.privacy.setdefault(str(site[wire.STOREFRONT]), {})
    record[wire.EPSILON] = float(metrics[wire.EPSILON])
    record[wire.EVALUATION_EPSILON] = float(metrics.get(wire.EVALUATION_EPSILON, 0.0))


def site_privacy_record(metrics: dict[str, float], note: str) -> dict[str, Any]:
    """What a train reply says about the site's privacy: ε, δ, DP steps, noise multiplier,
    and its note when it planned the server's request down."""
    record: dict[str, Any] = {
        key: float(metrics[key])
        for key in (wire.EPSILON, wire.DELTA, wire.DP_STEPS, wire.NOISE_MULTIPLIER)
        if key in metrics
    }
    if note:
        record[wire.PRIVACY_NOTE] = note
    return record


def _site_update(
    msg: Message, reply_weights: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
) -> tuple[SiteUpdate, None] | tuple[None, Rejection]:
    """Read a train reply into a :class:`SiteUpdate` (its weights by ``reply_weights``,
    which also replace the reply's arrays for aggregation), or reject it as malformed."""
    content = msg.content
    node_id = msg.metadata.src_node_id
    site_record = content.config_records.get(wire.SITE, ConfigRecord())
    storefront = str(site_record.get(wire.STOREFRONT, "unknown storefront"))

    def reject(reason: str, detail: str) -> tuple[None, Rejection]:
        return None, Rejection(node_id, storefront, reason, detail)

    records = {
        "arrays": set(content.array_records),
        "metrics": set(content.metric_records),
        "configs": set(content.config_records),
    }
    if (
        records["arrays"] != {wire.ARRAYS}
        or records["metrics"] != {wire.METRICS}
        or records["configs"] != {wire.SITE}
        or set(site_record) != wire.SITE_KEYS
    ):
        return reject("wrong-records", f"reply records {records}, site keys {set(site_record)}")
    try:
        weights = reply_weights({k: v.numpy() for k, v in content[wire.ARRAYS].items()})
    except (ValueError, TypeError) as err:
        return reject("unreadable-arrays", str(err))
    content[wire.ARRAYS] = _array_record(weights)
    metrics = {k: v for k, v in content[wire.METRICS].items() if not isinstance(v, list)}
    if len(metrics) != len(content[wire.METRICS]):
        return reject("wrong-metric-keys", "list-valued metrics are not part of the contract")
    note = str(site_record.get(wire.PRIVACY_NOTE, ""))
    return SiteUpdate(node_id, storefront, weights, metrics, reply=msg, privacy_note=note), None


def facts_record(digest: str, packed: bytes | None = None) -> ConfigRecord:
    """The :data:`common.wire.FACTS` record of a message: the facts' digest, with the
    facts themselves (:func:`common.wire.pack_facts`) for a node not known to hold them."""
    record: dict[str, Any] = {wire.FACTS_DIGEST: digest}
    if packed is not None:
        record[wire.FACTS_PACKED] = packed
    return ConfigRecord(record)


def training_arrays(weights: dict[str, np.ndarray], encoding: str) -> ArrayRecord:
    """The global weights as a train message carries them under ``encoding``: dense, or
    8-bit rounded to nearest (:mod:`common.wire_encoding`)."""
    return _array_record(weights if encoding == FLOAT32 else encode_int8(weights))


def trained_weights(
    arrays: dict[str, np.ndarray], global_weights: dict[str, np.ndarray], encoding: str
) -> dict[str, np.ndarray]:
    """A site's trained weights from its train reply's arrays: as sent (float32), or the
    round's exact ``global_weights`` plus the site's decoded 8-bit update (arrays whose
    names or shapes do not match are passed on for screening to reject).

    Raises:
        EncodingError: encoded arrays that cannot be decoded.
    """
    if encoding == FLOAT32:
        return arrays
    update = decode_int8(arrays)
    return {
        name: (global_weights[name] + value).astype(global_weights[name].dtype)
        if name in global_weights and value.shape == global_weights[name].shape
        else value
        for name, value in update.items()
    }


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(value)) for name, value in arrays.items()})


class ScreenedFedAvg(ValidatedAggregation, RobustAggregation):
    """FedAvg (or a robust mean) over screened updates."""


class ScreenedFedProx(ValidatedAggregation, FedProx, RobustAggregation):
    """FedProx over screened updates: sites pull their weights towards the global ones after
    every local step (``proximal-mu``; :mod:`models.optimizers`)."""


class ScreenedFedAdam(ValidatedAggregation, FedAdam, RobustAggregation):
    """FedAdam over screened updates: Adam step on the (robust) mean pseudo-gradient."""


@dataclass(frozen=True)
class StrategySettings:
    """Strategy options, as read from the run config (see :meth:`from_run_config`)."""

    server_optimizer: str = "fedavg"
    aggregation: str = "weighted-mean"
    trim_fraction: float = 0.2
    proximal_mu: float = 0.0
    server_learning_rate: float = 0.1
    min_accepted: int = 1
    min_sites: int = 2
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    update_encoding: str = INT8
    evaluation_rounds: str = "last"
    policy: ValidationPolicy = field(default_factory=ValidationPolicy)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> StrategySettings:
        """Read the kebab-case run-config keys, falling back to the defaults above."""
        default = cls()
        cap = float(run_config.get("max-update-norm", 0.0))
        return cls(
            server_optimizer=str(run_config.get("server-optimizer", default.server_optimizer)),
            aggregation=str(run_config.get("aggregation", default.aggregation)),
            trim_fraction=float(run_config.get("trim-fraction", default.trim_fraction)),
            proximal_mu=float(run_config.get("proximal-mu", default.proximal_mu)),
            server_learning_rate=float(
                run_config.get("server-learning-rate", default.server_learning_rate)
            ),
            min_accepted=int(run_config.get("min-accepted-updates", default.min_accepted)),
            min_sites=int(run_config.get("min-sites", default.min_sites)),
            fraction_train=float(run_config.get("fraction-train", default.fraction_train)),
            fraction_evaluate=float(run_config.get("fraction-evaluate", default.fraction_evaluate)),
            update_encoding=check_encoding(
                str(run_config.get("update-encoding", default.update_encoding))
            ),
            evaluation_rounds=str(run_config.get("evaluation-rounds", default.evaluation_rounds)),
            policy=ValidationPolicy(
                max_norm_ratio=float(run_config.get("max-norm-ratio", 10.0)),
                max_update_norm=cap if cap > 0 else None,
            ),
        )


def build_strategy(
    settings: StrategySettings, evaluate_metrics_aggr_fn: Any = None
) -> ValidatedAggregation:
    """Build the screened strategy the settings ask for."""
    common: dict[str, Any] = {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate,
        "min_train_nodes": settings.min_sites,
        "min_evaluate_nodes": settings.min_sites if settings.fraction_evaluate > 0 else 0,
        "min_available_nodes": settings.min_sites,
        "train_metrics_aggr_fn": aggregate_train_metrics,
        "evaluate_metrics_aggr_fn": evaluate_metrics_aggr_fn,
    }
    strategy: ValidatedAggregation
    if settings.server_optimizer == "fedavg":
        strategy = ScreenedFedAvg(**common)
    elif settings.server_optimizer == "fedprox":
        strategy = ScreenedFedProx(**common, proximal_mu=settings.proximal_mu)
    elif settings.server_optimizer == "fedadam":
        strategy = ScreenedFedAdam(**common, eta=settings.server_learning_rate)
    else:
        raise ValueError(
            f"server-optimizer must be one of {SERVER_OPTIMIZERS}, "
            f"got {settings.server_optimizer!r}"
        )
    strategy.setup(
        policy=settings.policy,
        min_accepted=settings.min_accepted,
        aggregation=settings.aggregation,
        trim_fraction=settings.trim_fraction,
        update_encoding=settings.update_encoding,
        evaluation_rounds=settings.evaluation_rounds,
    )
    return strategy
