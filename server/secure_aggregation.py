"""Secure aggregation (Flower SecAgg+, Bell et al. 2020): the server learns only the sum.

Switched on by the run config's ``secure-aggregation = true`` (shares and threshold:
``secagg-num-shares``, ``secagg-reconstruction-threshold``). Each model is then trained by
:func:`start_secure_aggregation` instead of the screened strategy's ``start``: same
initial weights, same sampled sites and train config (the screened strategy of
:mod:`server.strategy` still configures every round), same federated evaluation pooled by
:func:`server.evaluation.evaluation_aggregator`, same checkpoint and ``rounds.jsonl``
record after every round through the same end-of-round hook, hence the same bundle.

In flwr 1.42 SecAgg+ exists only on the legacy path: :class:`SecureFedAvg` (a legacy
``flwr.server.strategy.FedAvg``) inside ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow)``
with a ``LegacyContext``; the sites answer with ``secaggplus_mod``
(:mod:`clients.secure_training`).

Privacy: DP is user-level DP-SGD on each site (per-customer clipping and noise during
local training), so an update is already privatised when the site masks it. SecAgg+ adds
that the server never sees an individual update: pairwise and private masks cancel only
in the sum of the sites that completed the round; a dropped site's masks are rebuilt from
``secagg-reconstruction-threshold`` of its ``secagg-num-shares`` secret shares.

What the server still sees, per site: ``num-examples`` (the aggregation weight), the
train metrics (ε, δ, DP steps, noise multiplier) and the storefront name, and its evaluation sums.
It sees the weighted mean of the updates, never one update.

What the server can no longer check: the per-update screening of
:mod:`server.update_validation` (non-finite values, wrong shapes, norms far above the
round's median or above ``max-update-norm``) and robust aggregation (trimmed mean, median)
need individual updates, so they are off — a poisoned update cannot be found or left out,
it can only be bounded by the quantisation range. Each site checks its own update instead
(finite, inside the range) and drops out rather than send a value SecAgg+ would corrupt;
the server checks the *aggregate* (finite, right shapes) and keeps the previous model
otherwise. ``aggregation`` must be ``weighted-mean`` and ``server-optimizer`` ``fedavg`` or
``fedprox``.

Quantisation (constants in :class:`SecureAggregationSettings`): a site sends its update
``δ_i = w_i - w_global`` (not its weights: updates are small, so they quantise finely)
times its weight ``n_i / W``, clipped to ``[-C, C]`` and stochastically rounded to ``T``
levels; sums are taken modulo ``M``. The server divides the sum by ``Σ n_i / W`` and adds
``w_global``. Each coordinate of the result differs from the exact weighted FedAvg by less
than :func:`quantisation_error_bound`, ``k (2C/T) W / Σ n_i``: 3.6e-6 for 3 sites with
203 training customers in all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid
from flwr.supercore import log

from common import wire
from server.strategy import (
    RoundReport,
    ValidatedAggregation,
    aggregate_train_metrics,
    site_privacy_record,
)
from server.update_validation import Rejection

SECURE_OPTIMIZERS = ("fedavg", "fedprox")
"""Server optimizers that need only the mean update (FedProx's term is on the sites)."""


@dataclass(frozen=True)
class SecureAggregationSettings:
    """SecAgg+ options: the run config's switch and shares, and the quantisation constants."""

    enabled: bool = False
    num_shares: int = 3
    reconstruction_threshold: int = 2
    clipping_range: float = 8.0
    """``C``: the largest |update x weight| a site may send (Flower's default range)."""
    quantization_range: int = 2**30
    """``T``: levels per value; the largest that Flower's int32 rounding holds."""
    modulus_range: int = 2**40
    """``M``: sums are taken mod ``M``; ``M / T`` bounds the sites and the total weight.
    Flower's docstring asks for at most 2**32, but its masking arithmetic is int64 and
    2**40 leaves room for 1,023 sites at ``T = 2**30`` (checked by the tests' real runs)."""
    max_weight: int = 2**14
    """``W``: a site's weight is ``num-examples / W``; a power of two no larger than ``T``,
    so weights quantise exactly. A site of up to ``W`` customers may change a value by up
    to ``C``, a bigger one by up to ``C W / n`` (100,000 customers: 1.3); Flower's mod
    logs a "potential overflow" warning for those, the site's own check is what counts."""

    @property
    def max_sites(self) -> int:
        """Most sites per round whose quantised values cannot wrap around the modulus."""
        return self.modulus_range // self.quantization_range - 1

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> SecureAggregationSettings:
        """Read ``secure-aggregation`` and the share settings; refuse incompatible options."""
        default = cls()
        enabled = run_config.get("secure-aggregation", default.enabled)
        if not isinstance(enabled, bool):
            raise ValueError(
                f"run config 'secure-aggregation' must be true or false, got {enabled!r}"
            )
        settings = cls(
            enabled=enabled,
            num_shares=int(run_config.get("secagg-num-shares", default.num_shares)),
            reconstruction_threshold=int(
                run_config.get("secagg-reconstruction-threshold", default.reconstruction_threshold)
            ),
        )
        if not settings.enabled:
            return settings
        aggregation = str(run_config.get("aggregation", "weighted-mean"))
        optimizer = str(run_config.get("server-optimizer", "fedavg"))
        if aggregation != "weighted-mean":
            raise ValueError(
                "secure-aggregation needs aggregation = 'weighted-mean' (the server sees only "
                f"the sum, so no trimmed mean or median), got {aggregation!r}"
            )
        if optimizer not in SECURE_OPTIMIZERS:
            raise ValueError(
                f"secure-aggregation supports server-optimizer {SECURE_OPTIMIZERS}, "
                f"got {optimizer!r}"
            )
        if int(run_config.get("min-sites", 2)) < 2:
            raise ValueError("secure-aggregation needs min-sites >= 2 (a sum of one is no secret)")
        settings.fit_workflow(timeout=None)  # Flower's own checks of shares and ranges
        return settings

    def fit_workflow(self, timeout: float | None) -> SecAggPlusWorkflow:
        """Flower's SecAgg+ fit workflow with these settings."""
        return SecAggPlusWorkflow(
            self.num_shares,
            self.reconstruction_threshold,
            max_weight=self.max_weight,
            clipping_range=self.clipping_range,
            quantization_range=self.quantization_range,
            modulus_range=self.modulus_range,
            timeout=timeout,
        )


def legacy_facts(facts: Any) -> dict[str, Any]:
    """Shared facts as legacy FitIns config entries (one config only): ``facts.<key>``."""
    return {f"{wire.FACTS}.{key}": value for key, value in dict(facts).items()}


def quantisation_error_bound(
    settings: SecureAggregationSettings, num_sites: int, total_examples: int
) -> float:
    """Largest per-coordinate difference between SecAgg+'s mean and exact weighted FedAvg.

    Stochastic rounding moves each site's value by less than one level ``2C/T``; the sum of
    ``num_sites`` values is divided by ``Σ n_i / W`` (exact: ``W`` is a power of two), so
    the mean is off by less than ``k (2C/T) W / Σ n_i`` (float64 arithmetic adds far less).
    """
    level = 2 * settings.clipping_range / settings.quantization_range
    return num_sites * level * settings.max_weight / total_examples


class SecureFedAvg(LegacyFedAvg):
    """Legacy FedAvg whose rounds are configured by the screened strategy and whose
    ``aggregate_fit`` receives the SecAgg+ mean update (the same in every FitRes).

    Round reports go into the screened strategy's ``round_reports`` (absolute rounds), so
    the end-of-round hook records a secure round as it records a plain one.
    """

    def __init__(
        self,
        screened: ValidatedAggregation,
        grid: Grid,
        initial_weights: dict[str, np.ndarray],
        train_config: ConfigRecord,
        settings: SecureAggregationSettings,
    ) -> None:
        super().__init__(
            fraction_evaluate=0.0,  # federated evaluation is not legacy: see _EvaluateAndRecord
            min_evaluate_clients=0,
            initial_parameters=ndarrays_to_parameters(list(initial_weights.values())),
        )
        self.screened = screened
        self.grid = grid
        self.names = list(initial_weights)
        self.train_config = train_config
        self.settings = settings
        self._global: dict[str, np.ndarray] = {}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample sites and build their train config exactly as the plain path does."""
        self._global = dict(zip(self.names, parameters_to_ndarrays(parameters), strict=True))
        arrays = ArrayRecord({k: Array(v) for k, v in self._global.items()})
        messages = list(
            self.screened.configure_train(
                server_round, arrays, ConfigRecord(dict(self.train_config)), self.grid
            )
        )
        if len(messages) > self.settings.max_sites:
            raise ValueError(
                f"secure aggregation quantises for at most {self.settings.max_sites} sites per "
                f"round, {len(messages)} were sampled; lower fraction-train"
            )
        proxies = client_manager.all()
        instructions = []
        for msg in messages:
            config = {
                **dict(msg.content[wire.CONFIG]),
                **legacy_facts(msg.content.config_records.get(wire.FACTS, {})),
                wire.ARRAY_NAMES: self.names,
            }
            proxy = proxies.get(str(msg.metadata.dst_node_id))
            if proxy is None:
                log(WARNING, "Node %d is not registered yet; left out", msg.metadata.dst_node_id)
                continue
            instructions.append((proxy, FitIns(parameters, config)))
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Any]]:
        """Record the round, then add the unmasked mean update to the global weights."""
        absolute_round = server_round + self.screened.round_offset
        report = RoundReport()
        self.screened.round_reports[absolute_round] = report
        for error in _distinct_errors(failures):
            _record_failure(report, error)
        site_metrics = []
        for proxy, fitres in results:
            metrics = dict(fitres.metrics)
            storefront = str(metrics.pop(wire.STOREFRONT, "unknown storefront"))
            note = str(metrics.pop(wire.PRIVACY_NOTE, ""))
            if set(metrics) != wire.TRAIN_METRIC_KEYS:
                report.rejected.append(
                    Rejection(proxy.node_id, storefront, "wrong-metric-keys", str(sorted(metrics)))
                )
                continue
            report.accepted.append(storefront)
            report.privacy[storefront] = site_privacy_record(metrics, note)
            site_metrics.append(metrics)
        log(
            INFO,
            "Round %d (secure aggregation): %d sites in the sum, %d declined, %d failed",
            absolute_round,
            len(results),
            len(report.declined),
            len(report.failed),
        )
        new_weights = self._updated_weights(absolute_round, report, results, site_metrics)
        if new_weights is None:
            report.kept_previous_model = True
            return None, {}
        metrics = aggregate_train_metrics(
            [RecordDict({wire.METRICS: MetricRecord(m)}) for m in site_metrics], wire.NUM_EXAMPLES
        )
        report.train_metrics = dict(metrics)
        return ndarrays_to_parameters(list(new_weights.values())), dict(metrics)

    def _updated_weights(
        self,
        absolute_round: int,
        report: RoundReport,
        results: list[tuple[ClientProxy, FitRes]],
        site_metrics: list[dict[str, Any]],
    ) -> dict[str, np.ndarray] | None:
        """``w_global + mean update``, or ``None`` (with the reason logged) to keep the model."""
        reason = None
        if report.rejected:
            # Their masked updates are already inside the sum; it cannot be trusted.
            reason = f"malformed replies {[str(r) for r in report.rejected]}"
        elif len(site_metrics) < self.screened.min_accepted:
            reason = f"{len(site_metrics)} sites in the sum (minimum {self.screened.min_accepted})"
        elif sum(m[wire.NUM_EXAMPLES] for m in site_metrics) / self.settings.max_weight >= (
            self.settings.modulus_range / self.settings.quantization_range
        ):
            reason = "the sites' total weight overflows the SecAgg+ modulus"
        else:
            mean_update = parameters_to_ndarrays(results[0][1].parameters)
            shapes = [u.shape for u in mean_update]
            if shapes != [w.shape for w in self._global.values()]:
                reason = f"aggregate has shapes {shapes}"
            elif not all(np.isfinite(u).all() for u in mean_update):
                reason = "aggregate is not finite"
        if reason is not None:
            log(WARNING, "Round %d: keeping the previous global model: %s", absolute_round, reason)
            return None
        return {
            name: (weights + update).astype(weights.dtype)
            for (name, weights), update in zip(self._global.items(), mean_update, strict=True)
        }


def _distinct_errors(failures: list[tuple[ClientProxy, FitRes] | BaseException]) -> list[Any]:
    """Each failed reply's error once: flwr 1.42's SecAgg+ workflow lists an error reply of
    the masked-vector stage twice (once when summing, once when building FitRes)."""
    distinct: dict[int, Any] = {}
    for failure in failures:
        is_wrapped = isinstance(failure, BaseException) and failure.args
        error = failure.args[0] if is_wrapped else failure
        distinct.setdefault(id(error), error)
    return list(distinct.values())


def _record_failure(report: RoundReport, error: Any) -> None:
    """Sort a failed reply's error into declined (the site's decline codes) or failed."""
    code = getattr(error, "code", None)
    reason = getattr(error, "reason", None) or str(error)
    if code in wire.DECLINE_REASONS:
        report.declined.append(f"a site: {reason}")
        log(INFO, "A site declined the secure round: %s", reason)
    else:
        report.failed.append(f"a site: error {code}" if code is not None else f"a site: {reason}")
        log(WARNING, "A site failed in the secure round: %s", reason)


@dataclass
class _EvaluateAndRecord:
    """The evaluate workflow of a secure run: the screened strategy's federated evaluation
    (plain Message-API messages, pooled by the model's aggregator), then the end-of-round
    hook (checkpoint and ``rounds.jsonl``), as ``Strategy.start`` does after a round."""

    strategy: ValidatedAggregation
    names: list[str]
    evaluate_config: ConfigRecord
    end_of_round: Callable[[int, ArrayRecord], Any]
    timeout: float

    def __call__(self, grid: Grid, context: Context) -> None:
        server_round = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        legacy = context.state.array_records[MAIN_PARAMS_RECORD]
        weights = parameters_to_ndarrays(arrayrecord_to_parameters(legacy, keep_input=True))
        arrays = ArrayRecord({k: Array(v) for k, v in zip(self.names, weights, strict=True)})
        absolute_round = server_round + self.strategy.round_offset
        if absolute_round not in self.strategy.round_reports:
            log(WARNING, "Round %d: secure aggregation halted; model unchanged", absolute_round)
            self.strategy.round_reports[absolute_round] = RoundReport(kept_previous_model=True)
        replies = grid.send_and_receive(
            self.strategy.configure_evaluate(
                server_round, arrays, ConfigRecord(dict(self.evaluate_config)), grid
            ),
            timeout=self.timeout,
        )
        self.strategy.aggregate_evaluate(server_round, replies)
        self.end_of_round(server_round, arrays)


def start_secure_aggregation(
    settings: SecureAggregationSettings,
    strategy: ValidatedAggregation,
    *,
    grid: Grid,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    evaluate_fn: Callable[[int, ArrayRecord], Any],
) -> None:
    """Run ``num_rounds`` rounds like ``strategy.start(...)``, aggregating through SecAgg+.

    Takes ``strategy.start``'s keyword arguments; ``strategy`` configures the rounds,
    evaluates and keeps the round reports, its ``round_offset`` numbers rounds absolutely.
    """
    log(
        WARNING,
        "Secure aggregation (SecAgg+, %d shares, threshold %d): the server sees only the "
        "sum; per-update screening and robust aggregation are off",
        settings.num_shares,
        settings.reconstruction_threshold,
    )
    weights = {name: array.numpy() for name, array in initial_arrays.items()}
    evaluate_fn(0, initial_arrays)  # as Strategy.start does before the first round
    legacy_strategy = SecureFedAvg(strategy, grid, weights, train_config, settings)
    run_context = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    context = LegacyContext(
        run_context,
        config=ServerConfig(num_rounds=num_rounds, round_timeout=timeout),
        strategy=legacy_strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=settings.fit_workflow(timeout),
        evaluate_workflow=_EvaluateAndRecord(
            strategy, list(weights), evaluate_config, evaluate_fn, timeout
        ),
    )
    workflow(grid, context)
