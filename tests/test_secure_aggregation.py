"""Secure aggregation (SecAgg+): the legacy strategy, the site's self-check, and real runs.

Two Flower simulations (Ray's start-up dominates the time) run the real ``run_federation``
on three tiny synthetic storefronts, churn model. The first runs it three times:

- ``plain``: non-private (ε = 0), 1 round, plain screened FedAvg;
- ``secure``: the same, through SecAgg+ — sites are deterministic in simulation (seed per
  partition and round) and these federations share one Flower run, so one release of
  each site's cohort size: both aggregate the very same replies;
- ``secure`` again with 2 rounds: resumes at round 2 from its checkpoint.

The second runs ``dp``: SecAgg+ with user-level DP at ε = 3 for 2 rounds; one storefront's
ledger is already spent, so it declines and SecAgg+ unmasks the sum of the other two.

The ClientApp hands the real handlers of :mod:`clients.client_app` the run config of the
simulation's last federation (as ``tests/test_federation_sim.py`` does), so the sites keep
their ledgers in that federation's run directory.
"""

import json
import math
import traceback

import numpy as np
import pytest
from flower_replies import NodeList, train_metrics
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from in_process import read_rounds, simulate_federation
from independent_accounting import matches_ledger_oracle

from clients.secure_training import (
    UnmaskableUpdate,
    check_maskable,
    is_secure_aggregation_message,
)
from common import wire
from lab.sequential import server_message
from models.registry import get_model
from privacy.accountants import DPSegment
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from server.checkpoint import CHECKPOINT_DIR, load_checkpoint
from server.secure_aggregation import (
    SecureAggregationSettings,
    SecureFedAvg,
    quantisation_error_bound,
)
from server.server_app import plan_models, run_federation
from server.strategy import StrategySettings, build_strategy
from simulations.exact_evaluation import exact_metrics
from simulations.runner import app_run_config
from simulations.shared_facts import with_split_facts
from simulations.site_policies import apply_site_policy
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders

MODEL = "churn"
SITES = 3
EPSILON = 3.0
GLOBAL = {"w": np.full((3, 2), 0.5, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
TRAIN_CONFIG = {wire.MODEL: MODEL, wire.LOCAL_EPOCHS: 1, wire.PLANNED_ROUNDS: 3}


# --- settings ------------------------------------------------------------------------


def test_settings_read_the_switch_and_refuse_what_needs_individual_updates():
    assert not SecureAggregationSettings.from_run_config({}).enabled
    on = {"secure-aggregation": True, "secagg-num-shares": 5, "secagg-reconstruction-threshold": 3}
    settings = SecureAggregationSettings.from_run_config(on)
    assert (settings.enabled, settings.num_shares, settings.reconstruction_threshold) == (
        True,
        5,
        3,
    )
    for conflict, message in (
        ({"aggregation": "median"}, "weighted-mean"),
        ({"aggregation": "trimmed-mean"}, "weighted-mean"),
        ({"server-optimizer": "fedadam"}, "server-optimizer"),
        ({"min-sites": 1}, "min-sites"),
        ({"secagg-reconstruction-threshold": 5}, "reconstruction_threshold"),
        ({"secure-aggregation": "false"}, "true or false"),
    ):
        with pytest.raises(ValueError, match=message):
            SecureAggregationSettings.from_run_config({**on, **conflict})
    # Off, the same options are the plain path's business.
    assert not SecureAggregationSettings.from_run_config({"aggregation": "median"}).enabled


def test_error_bound_shrinks_with_customers_and_grows_with_sites():
    settings = SecureAggregationSettings()
    level = 2 * settings.clipping_range / settings.quantization_range
    assert quantisation_error_bound(settings, 3, 203) == pytest.approx(3 * level * 2**14 / 203)
    assert quantisation_error_bound(settings, 3, 2030) < quantisation_error_bound(settings, 3, 203)
    assert settings.max_sites == 2**10 - 1  # M / T sums of T levels fit below M


# --- the legacy strategy -------------------------------------------------------------


@pytest.fixture
def serverapp_identity(monkeypatch):
    """Messages are stamped with the sending task's identity, as inside a running ServerApp."""
    for attribute, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


def secure_strategy(nodes=(1, 2, 3), **strategy_options):
    grid = NodeList(list(nodes))
    screened = build_strategy(StrategySettings(**strategy_options))
    secure = SecureFedAvg(
        screened, grid, GLOBAL, ConfigRecord(TRAIN_CONFIG), SecureAggregationSettings()
    )
    clients = SimpleClientManager()
    for node in nodes:
        clients.register(GridClientProxy(node, grid, run_id=1))
    return secure, clients


def global_parameters():
    return ndarrays_to_parameters(list(GLOBAL.values()))


@pytest.mark.usefixtures("serverapp_identity")
def test_secure_rounds_send_the_plain_paths_train_config_to_the_same_sample():
    secure, clients = secure_strategy(server_optimizer="fedprox", proximal_mu=0.05)
    secure.screened.round_offset = 4
    instructions = secure.configure_fit(2, global_parameters(), clients)

    plain = build_strategy(StrategySettings(server_optimizer="fedprox", proximal_mu=0.05))
    plain.round_offset = 4
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    [plain_message, *_] = plain.configure_train(
        2, arrays, ConfigRecord(TRAIN_CONFIG), NodeList([1, 2, 3])
    )
    expected = dict(plain_message.content[wire.CONFIG])
    assert expected[wire.SERVER_ROUND] == 6 and expected[wire.PROXIMAL_MU] == 0.05

    assert sorted(proxy.node_id for proxy, _ in instructions) == [1, 2, 3]
    for _, fitins in instructions:
        config = dict(fitins.config)
        assert config.pop(wire.ARRAY_NAMES) == list(GLOBAL)
        assert config == expected
        sent = parameters_to_ndarrays(fitins.parameters)
        assert all(np.array_equal(a, b) for a, b in zip(sent, GLOBAL.values(), strict=True))


def fit_result(proxy, mean_update, *, num_examples, storefront, **extra_metrics):
    metrics = {**train_metrics(num_examples), wire.STOREFRONT: storefront, **extra_metrics}
    return proxy, FitRes(Status(Code.OK, ""), mean_update, num_examples, metrics)


@pytest.mark.usefixtures("serverapp_identity")
def test_aggregate_adds_the_unmasked_mean_update_and_reports_the_round():
    secure, clients = secure_strategy(nodes=(1, 2, 3, 4))
    secure.screened.round_offset = 2
    secure.configure_fit(1, global_parameters(), clients)
    update = {"w": np.full((3, 2), 0.25), "b": np.array([-1.0, 1.0])}
    mean_update = ndarrays_to_parameters(list(update.values()))  # SecAgg+ gives all the same
    proxies = clients.all()
    results = [
        fit_result(proxies["1"], mean_update, num_examples=300, storefront="France"),
        fit_result(proxies["2"], mean_update, num_examples=100, storefront="Spain"),
    ]
    declined = Error(wire.DECLINED_BUDGET_EXHAUSTED, "privacy-budget-exhausted: 3.1 > 3.0")
    # Flower's SecAgg+ workflow lists an error reply of the masked-vector stage twice.
    failures = [Exception(declined), Exception(declined), Exception(Error(5, "Node Unavailable"))]

    parameters, metrics = secure.aggregate_fit(1, results, failures)

    new = dict(zip(GLOBAL, parameters_to_ndarrays(parameters), strict=True))
    np.testing.assert_array_equal(new["w"], np.full((3, 2), 0.75, dtype=np.float32))
    np.testing.assert_array_equal(new["b"], np.array([-1.0, 1.0], dtype=np.float32))
    assert all(new[k].dtype == GLOBAL[k].dtype for k in GLOBAL)
    report = secure.screened.round_reports[3]  # absolute round
    assert report.accepted == ["France", "Spain"] and not report.kept_previous_model
    [declined_site] = report.declined
    assert "privacy-budget-exhausted: 3.1 > 3.0" in declined_site
    assert report.failed == ["a site: error 5"]
    assert report.privacy["Spain"] == {
        wire.EPSILON: 1.0,
        wire.DELTA: 1e-5,
        wire.DP_STEPS: 10,
        wire.NOISE_MULTIPLIER: 1.0,
    }
    assert metrics["num-examples"] == 400 and metrics["num-sites"] == 2
    assert report.train_metrics == metrics


@pytest.mark.usefixtures("serverapp_identity")
@pytest.mark.parametrize("fault", ["undocumented-metric", "non-finite", "too-few-sites"])
def test_an_untrustworthy_sum_keeps_the_previous_model(fault, caplog):
    secure, clients = secure_strategy(min_accepted=2 if fault == "too-few-sites" else 1)
    secure.configure_fit(1, global_parameters(), clients)
    value = np.nan if fault == "non-finite" else 0.1
    mean_update = ndarrays_to_parameters([np.full((3, 2), value), np.zeros(2)])
    extra = {"customer-count-by-day": 3.0} if fault == "undocumented-metric" else {}
    proxies = clients.all()
    results = [fit_result(proxies["1"], mean_update, num_examples=50, storefront="A", **extra)]
    if fault != "too-few-sites":
        results.append(fit_result(proxies["2"], mean_update, num_examples=50, storefront="B"))

    with caplog.at_level("WARNING", logger="flwr"):
        parameters, _ = secure.aggregate_fit(1, results, [])

    assert parameters is None
    assert secure.screened.round_reports[1].kept_previous_model
    assert "keeping the previous global model" in caplog.text
    if fault == "undocumented-metric":
        [rejection] = secure.screened.round_reports[1].rejected
        assert rejection.reason == "wrong-metric-keys" and rejection.storefront == "A"


# --- the site ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("largest_change", "num_examples", "maskable"),
    [
        (7.9, 2**14, True),  # weight 1: any change up to C = 8
        (8.0, 2**14, True),
        (8.1, 2**14, False),
        (0.79, 10 * 2**14, True),  # weight 10: up to C / 10
        (0.81, 10 * 2**14, False),
        (np.nan, 100, False),
        (np.inf, 100, False),
    ],
)
def test_site_refuses_updates_secagg_would_clip_or_corrupt(largest_change, num_examples, maskable):
    update = [np.zeros((2, 2)), np.array([0.0, largest_change])]
    limits = {"clipping_range": 8.0, "max_weight": 2**14}
    if maskable:
        check_maskable(update, num_examples, **limits)
    else:
        with pytest.raises(UnmaskableUpdate, match="sits the round out"):
            check_maskable(update, num_examples, **limits)


def test_only_secagg_stages_take_the_secure_path():
    plain = RecordDict({wire.ARRAYS: ArrayRecord(), wire.CONFIG: ConfigRecord({"a": 1})})
    stage = RecordDict({"secaggplus_configs": ConfigRecord({"stage": "setup"})})
    assert not is_secure_aggregation_message(server_message(plain, "train", 1))
    assert is_secure_aggregation_message(server_message(stage, "train", 1))


# --- real federations in one Flower simulation ---------------------------------------


def run_config_for(split, run_dir, **overrides):
    return with_split_facts(
        {
            **app_run_config(),
            "models": MODEL,
            "storefronts-dir": str(split),
            "run-dir": str(run_dir),
            "num-server-rounds": 1,
            "epsilon": 0.0,
            "min-sites": 2,
            "secure-aggregation": False,
            **overrides,
        }
    )


SITE_POLICY = ["min-cohort=5", "cohort-noise=3"]
"""These storefronts are tiny: a small minimum cohort, counts noisy by three customers."""


@pytest.fixture(scope="module")
def federations(tmp_path_factory):
    """Run directories of the four federations of the module docstring, by name."""
    base = tmp_path_factory.mktemp("secure-aggregation")
    split = base / "storefronts"
    prepare_storefronts(
        generate_orders(n_storefronts=SITES, n_customers=300, n_items=40, seed=11), split
    )
    runs = {name: base / name for name in ("plain", "secure", "dp")}
    spent = sorted(p.name for p in split.iterdir() if p.is_dir())[-1]
    with PrivacyLedger(runs["dp"] / "sites" / spent / LEDGER_FILE) as ledger:
        # An earlier run already spent more than this run's budget.
        ledger.reserve(
            MODEL,
            DPSegment(1.0, 1.0, 20),
            budget_epsilon=100.0,
            delta=1e-5,
            max_grad_norm=1.0,
            accountant="rdp",
        )
    # The sites consent to training without DP (the plain and secure federations ask for
    # none).
    apply_site_policy(split, runs["secure"], [*SITE_POLICY, "dp-required=false"], set_by="test")
    apply_site_policy(split, runs["dp"], SITE_POLICY, set_by="test")
    secure = {"secure-aggregation": True}
    simulations = [
        [
            # the exact reference: dense float32 updates (SecAgg+ quantises its own way)
            run_config_for(split, runs["plain"], **{"update-encoding": "float32"}),
            run_config_for(split, runs["secure"], **secure),
            run_config_for(split, runs["secure"], **secure, **{"num-server-rounds": 2}),
        ],
        [run_config_for(split, runs["dp"], **secure, epsilon=EPSILON, **{"num-server-rounds": 2})],
    ]
    errors: list[str] = []
    for configs in simulations:

        def main(grid: Grid, context: Context, configs=configs) -> None:
            for run_config in configs:
                try:
                    run_federation(grid, run_config)
                except Exception:
                    errors.append(traceback.format_exc())
                    raise

        simulate_federation(main, configs[-1], SITES)
    assert not errors, errors[0]
    return runs, spent, split


def weights_after(run_dir, rounds_done):
    path = run_dir / CHECKPOINT_DIR / f"checkpoint-{rounds_done:06d}.npz"
    return load_checkpoint(path).models[MODEL].weights


@pytest.mark.slow
def test_secure_aggregate_equals_plain_weighted_fedavg_within_the_quantisation_bound(
    federations,
):
    runs, _, split = federations
    [plain_round] = read_rounds(runs["plain"])
    secure_round = read_rounds(runs["secure"])[0]
    # Same replies: identical example counts and the identical weighted training loss.
    assert secure_round["train-metrics"] == plain_round["train-metrics"]
    assert sorted(secure_round["accepted"]) == sorted(plain_round["accepted"])
    assert len(secure_round["accepted"]) == SITES

    plain, secure = weights_after(runs["plain"], 1), weights_after(runs["secure"], 1)
    initial = get_model(MODEL).initial_weights({})
    metrics = plain_round["train-metrics"]
    bound = quantisation_error_bound(
        SecureAggregationSettings(), metrics["num-sites"], metrics["num-examples"]
    )
    # Both paths round the result to float32 once more (a few ulps of the weights).
    tolerance = bound + 4 * np.finfo(np.float32).eps * max(np.abs(w).max() for w in plain.values())
    assert tolerance < 5e-6  # 3.6e-6 quantisation + 1.6e-7 float32 here
    difference = max(np.abs(secure[k] - plain[k]).max() for k in plain)
    assert difference <= tolerance
    assert difference > 0  # SecAgg+'s stochastic rounding leaves a trace: it really ran
    moved = max(np.abs(plain[k] - initial[k]).max() for k in plain)
    assert moved > 1000 * tolerance  # the comparison is not between two unchanged models

    # The same model: the same exact metrics (the sites' released estimates of it are noisy).
    facts = plan_models(run_config_for(split, runs["plain"]))[0].facts
    plain_exact = exact_metrics(split, MODEL, plain, facts)
    secure_exact = exact_metrics(split, MODEL, secure, facts)
    assert secure_exact["roc-auc"] == pytest.approx(plain_exact["roc-auc"], abs=1e-3)
    assert plain_round["evaluate-metrics"]["roc-auc-sd"] > 0


@pytest.mark.slow
def test_secure_run_resumes_from_its_checkpoint(federations):
    runs, _, _ = federations
    rounds = read_rounds(runs["secure"])
    assert [r["round"] for r in rounds] == [1, 2]
    assert len(rounds[1]["accepted"]) == SITES and not rounds[1]["kept-previous-model"]
    first, second = weights_after(runs["secure"], 1), weights_after(runs["secure"], 2)
    assert max(np.abs(second[k] - first[k]).max() for k in first) > 1e-4
    manifest = json.loads((runs["secure"] / "bundle" / "manifest.json").read_text())
    assert manifest["models"][MODEL]["rounds-done"] == 2


@pytest.mark.slow
def test_dp_with_secure_aggregation_spends_the_ledger_and_reports_it(federations):
    runs, spent, _ = federations
    rounds = read_rounds(runs["dp"])
    assert [r["round"] for r in rounds] == [1, 2]
    training = sorted(p.name for p in (runs["dp"] / "sites").iterdir() if p.name != spent)
    for record in rounds:
        assert sorted(record["accepted"]) == training  # storefront names equal slugs here
        [declined] = record["declined"]
        assert f"privacy-budget-exhausted ({spent}): " in declined
        assert record["failed"] == [] and not record["kept-previous-model"]
        assert set(record["privacy"]) == set(training)
        assert record["train-metrics"]["max-epsilon"] <= EPSILON
    # The final model was evaluated and pooled. On these tiny storefronts at the evaluation
    # ε a run of ε 3 gets (0.75), a class's noisy count can come out ≤ 0: then there is no
    # AUC (NaN), the server's honest answer; any AUC it does give is a probability.
    final = rounds[-1]["evaluate-metrics"]
    assert {"roc-auc", "roc-auc-sd", "brier", "num-customers"} <= set(final)
    assert math.isnan(final["roc-auc"]) or 0 <= final["roc-auc"] <= 1
    with PrivacyLedger(runs["dp"] / "sites" / spent / LEDGER_FILE) as ledger:
        assert len(ledger.entries(MODEL)) == 1  # declining spent nothing

    for slug in training:
        reported = rounds[-1]["privacy"][slug]
        with PrivacyLedger(runs["dp"] / "sites" / slug / LEDGER_FILE) as ledger:
            entries = ledger.entries(MODEL)
            ledger_epsilon = ledger.epsilon(MODEL, reported["delta"])
        trained = [e for e in entries if e.purpose == "training"]
        assert [e.server_round for e in trained] == [1, 2]
        assert all(e.status == "committed" for e in entries)
        assert reported["dp-steps"] == sum(e.segment.steps for e in trained) > 0
        assert reported["epsilon"] == ledger_epsilon
        assert matches_ledger_oracle(reported["epsilon"], entries, reported["delta"])
        assert 0.99 * EPSILON <= reported["epsilon"] <= EPSILON  # σ planned for both rounds
        assert rounds[0]["privacy"][slug]["epsilon"] < reported["epsilon"]

    initial = get_model(MODEL).initial_weights({})
    final = weights_after(runs["dp"], 2)
    assert all(np.isfinite(final[k]).all() for k in final)
    change = max(np.abs(final[k] - initial[k]).max() for k in final)
    # Trained, and the declined site's masks were removed: a leftover mask would turn the
    # mean into noise of the modulus' size (thousands), not a small DP step.
    assert 1e-4 < change < 1.0
    manifest = json.loads((runs["dp"] / "bundle" / "manifest.json").read_text())
    assert manifest["models"][MODEL]["rounds-done"] == 2
    assert manifest["models"][MODEL]["privacy-per-storefront"] == rounds[-1]["privacy"]
