"""The site owns its privacy: its policy decides what a run may spend and what may leave.

Planning (privacy.planning.plan_site_run) on a real ledger, then the real ClientApp
handlers of a simulated and a deployed site: requests for more ε are planned down, a
request without DP is declined, every failure is a reasoned refusal naming the
storefront, and small evaluation cohorts are suppressed. Last, the site's own commands
(`fedshop-site policy`, `privacy-report`).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from independent_accounting import matches_ledger_oracle

from clients import client_app
from clients.site_privacy import ensure_default_policy
from common import wire
from lab.sequential import server_message
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from privacy.planning import PolicyDecline, plan_site_run, site_delta
from privacy.policy import PolicyError, SitePolicy
from server.server_app import ModelRun, plan_models
from simulations.runner import app_run_config
from simulations.shared_facts import with_split_facts
from simulations.site_policies import apply_site_policy
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders

FEDSHOP_SITE = str(Path(sys.executable).with_name("fedshop-site"))
DEFAULTS = SitePolicy(delta=1e-5)
"""The default policy as ``prepare`` writes it for a site of at most 10,000 customers."""
PLAN = {"n_customers": 400, "batch_size": 50, "local_epochs": 1, "planned_rounds": 2}


def run_rounds(ledger: PrivacyLedger, policy: SitePolicy, run: str, requested: float) -> str:
    """Plan a run of two rounds as a site does, reserve and commit both; the grant's note."""
    earlier = [entry for entry in ledger.entries("churn") if entry.run != run]
    grant = plan_site_run(policy, "churn", requested_epsilon=requested, earlier=earlier, **PLAN)
    for server_round in (1, 2):
        reservation = ledger.reserve(
            "churn",
            grant.plan.round_segment,
            budget_epsilon=grant.plan.epsilon_budget,
            delta=grant.plan.delta,
            max_grad_norm=1.0,
            accountant=grant.plan.accountant,
            server_round=server_round,
            run=run,
        )
        ledger.commit(reservation)
    return grant.note


def test_runs_spend_at_most_the_lifetime_cap_whatever_the_server_asks(tmp_path: Path) -> None:
    policy = DEFAULTS  # cap ε = 8 per model, up to the whole cap in one run
    with PrivacyLedger(tmp_path / LEDGER_FILE) as ledger:
        assert run_rounds(ledger, policy, "run-1", requested=3.0) == ""  # granted as asked
        spent = ledger.epsilon("churn", 1e-5)
        assert 0.99 * 3.0 <= spent <= 3.0
        note = run_rounds(ledger, policy, "run-2", requested=50.0)  # asks for far more
        assert note.startswith("planned down: asked ε 50 for this run")
        assert "remains" in note
        spent = ledger.epsilon("churn", 1e-5)
        assert 0.99 * 8.0 <= spent <= 8.0  # all of the cap, never more
        entries = ledger.entries("churn")
        assert matches_ledger_oracle(spent, entries, 1e-5)
        with pytest.raises(PolicyDecline, match="privacy-budget-exhausted: churn has spent"):
            plan_site_run(policy, "churn", requested_epsilon=1.0, earlier=entries, **PLAN)


def test_a_run_may_not_spend_more_than_the_policys_per_run_maximum(tmp_path: Path) -> None:
    policy = SitePolicy(epsilon_cap=10.0, max_epsilon_per_run=2.0, delta=1e-5)
    with PrivacyLedger(tmp_path / LEDGER_FILE) as ledger:
        note = run_rounds(ledger, policy, "run-1", requested=8.0)
        assert "the policy allows 2 per run" in note
        assert 0.99 * 2.0 <= ledger.epsilon("churn", 1e-5) <= 2.0


def test_no_dp_only_where_the_policy_allows_it() -> None:
    with pytest.raises(PolicyDecline, match="privacy-policy: .* without DP") as declined:
        plan_site_run(DEFAULTS, "churn", requested_epsilon=0.0, earlier=[], **PLAN)
    assert declined.value.code == wire.DECLINED_POLICY
    grant = plan_site_run(
        SitePolicy(dp_required=False, delta=1e-5),
        "churn",
        requested_epsilon=-1.0,
        earlier=[],
        **PLAN,
    )
    assert grant.plan is None and "without DP" in grant.note


def test_a_policy_refuses_meaningless_settings() -> None:
    for bad in (
        {"epsilon_cap": 0.0},
        {"max_epsilon_per_run": math.inf},
        {"delta": 1.0},
        {"min_cohort": 0},
        {"accountant": "guesswork"},
        {"dp_required": "yes"},
        {"model_epsilon_caps": {"churn": -1.0}},
        {"evaluation_epsilon": 0.0},
        {"max_evaluations_per_run": -1},
        {"max_evaluations_per_run": 2.5},
        {"cohort_noise": math.nan},
        {"data_period": ("2011-01-01",)},
        {"fact_bounds": {"churn": 3}},
    ):
        with pytest.raises(PolicyError):
            SitePolicy(**bad)
    policy = SitePolicy(
        model_epsilon_caps={"churn": 12.0},
        models=("churn",),
        delta=1e-6,
        data_period=("2010-12-01", "2011-12-09"),
        fact_bounds={"recommender": {"min-catalogue-items": 50}},
    )
    assert SitePolicy.from_json(policy.to_json()) == policy
    assert policy.cap_for("churn") == 12.0 and policy.cap_for("recommender") == 8.0


# --- The real ClientApp handlers ---------------------------------------------------------


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """A split of two synthetic storefronts (one large, one of 15 customers), the server's
    model runs, and each site's context (partition 0: large, 1: small). The sites' cohort
    noise is 1 customer, so that which side of the minimum cohort each is on is certain."""
    tmp_path = tmp_path_factory.mktemp("sites")
    frame = generate_orders(n_storefronts=1, n_customers=400, n_items=30, seed=8)
    customers = sorted(frame["customer"].unique())
    frame["storefront"] = "large"
    frame.loc[frame["customer"].isin(customers[:15]), "storefront"] = "small"
    prepare_storefronts(frame, tmp_path / "split")
    run_config = {
        **app_run_config(),
        "storefronts-dir": str(tmp_path / "split"),
        "run-dir": str(tmp_path / "run"),
    }
    runs = {run.model.name: run for run in plan_models(with_split_facts(run_config))}
    apply_site_policy(tmp_path / "split", tmp_path / "run", ["cohort-noise=1"], set_by="test")
    contexts = [
        Context(7, node, {"partition-id": node, "num-partitions": 2}, RecordDict(), run_config)
        for node in (0, 1)
    ]
    return runs, contexts


def train_message(run: ModelRun, requested: float, **extra) -> Message:
    weights = run.model.initial_weights(run.facts)
    arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
    config = {
        **run.train_config,
        wire.EPSILON_BUDGET: requested,
        wire.PLANNED_ROUNDS: 1,
        wire.SERVER_ROUND: 1,
        **extra,
    }
    return server_message(run.content(arrays, config), "train", 1)


def evaluate_message(run: ModelRun) -> Message:
    weights = run.model.initial_weights(run.facts)
    arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
    return server_message(run.content(arrays, run.evaluate_config), "evaluate", 1)


def test_a_server_asking_for_epsilon_50_gets_at_most_the_sites_cap(sites) -> None:
    runs, (large, _) = sites
    reply = client_app.train(train_message(runs["churn"], 50.0), large)
    assert not reply.has_error()
    metrics = reply.content[wire.METRICS]
    assert 0 < metrics[wire.EPSILON] <= 8.0 and metrics[wire.NOISE_MULTIPLIER] > 0
    note = reply.content[wire.SITE][wire.PRIVACY_NOTE]
    assert note.startswith("planned down: asked ε 50 for this run, the policy allows 8 per run")


@pytest.mark.parametrize(
    ("change", "code", "detail"),
    [
        ({wire.EPSILON_BUDGET: 0.0}, wire.DECLINED_POLICY, "without DP"),
        ({wire.MODEL: "tests.plugin_model"}, wire.DECLINED_POLICY, "this site's policy trains"),
        ({wire.MODEL: "os"}, wire.DECLINED_POLICY, "this site's policy trains"),
    ],
)
def test_requests_the_policy_does_not_allow_are_refused_with_a_reason(
    sites, change, code, detail
) -> None:
    runs, (large, _) = sites
    message = train_message(runs["churn"], 3.0, **change)
    reply = client_app.train(message, large)
    assert reply.error.code == code
    assert reply.error.reason.startswith(f"{wire.DECLINE_REASONS[code]} (large): ")
    assert detail in reply.error.reason


def test_small_evaluation_cohorts_are_suppressed_large_ones_sent(sites) -> None:
    runs, (large, small) = sites
    for model in ("churn", "recommender"):
        suppressed = client_app.evaluate(evaluate_message(runs[model]), small)
        assert suppressed.error.code == wire.SUPPRESSED
        assert suppressed.error.reason.startswith("suppressed (small): ")
        assert "below this site's minimum cohort of 20 customers" in suppressed.error.reason
        sent = client_app.evaluate(evaluate_message(runs[model]), large).content[wire.METRICS]
        assert sent[wire.NUM_EXAMPLES] >= 20


def test_every_failure_is_a_reasoned_refusal_never_a_crash(sites, tmp_path) -> None:
    runs, (large, _) = sites
    message = train_message(runs["churn"], 3.0)
    # A ledger that cannot be trusted.
    broken = Path(large.run_config["run-dir"]) / "sites" / "broken"
    broken.mkdir(parents=True)
    (broken / LEDGER_FILE).write_bytes(b"not a database" * 50)
    data = tmp_path / "data"
    data.mkdir()
    deployed = Context(7, 9, {"data-path": str(broken), "storefront": "Narnia"}, RecordDict(), {})
    reply = client_app.train(message, deployed)
    assert reply.error.code == wire.DECLINED_SITE_ERROR
    assert reply.error.reason.startswith("site-error (Narnia): privacy ledger")
    # A deployed site without prepared data, then without a policy.
    missing = Context(7, 9, {"data-path": str(data)}, RecordDict(), {})
    reply = client_app.train(message, missing)
    assert reply.error.code == wire.DECLINED_POLICY and "holds no privacy policy" in (
        reply.error.reason
    )
    with PrivacyLedger(data / LEDGER_FILE) as ledger:
        ledger.set_policy(DEFAULTS, set_by="test", reason="defaults")
    reply = client_app.train(message, missing)
    assert reply.error.code == wire.DECLINED_SITE_ERROR
    assert "prepared orders not found" in reply.error.reason
    # A message without the model's shared facts.
    bare = train_message(runs["churn"], 3.0)
    del bare.content[wire.FACTS]
    assert client_app.train(bare, large).error.code == wire.DECLINED_SITE_ERROR


def test_a_site_with_no_customer_before_the_churn_cutoff_declines(sites, tmp_path) -> None:
    runs, (large, _) = sites
    late = generate_orders(n_storefronts=1, n_customers=30, n_items=20, seed=2)
    late = late[
        late["timestamp"]
        > late["timestamp"].max() - (late["timestamp"].max() - late["timestamp"].min()) / 20
    ]
    prepare_storefronts(late.assign(storefront="late"), tmp_path / "late")
    site = tmp_path / "late" / "late"
    with PrivacyLedger(site / LEDGER_FILE) as ledger:
        ledger.set_policy(SitePolicy(delta=1e-5, cohort_noise=1.0), set_by="test", reason="x")
    context = Context(7, 3, {"data-path": str(site)}, RecordDict(), {})
    reply = client_app.train(train_message(runs["churn"], 3.0), context)
    # As for any cohort below the minimum: the reason does not say it is empty.
    assert reply.error.code == wire.DECLINED_COHORT
    assert "below this site's minimum cohort of 20 customers" in reply.error.reason


# --- The site's own commands ---------------------------------------------------------------


def fedshop_site(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEDSHOP_SITE, *arguments], capture_output=True, text=True, timeout=120, check=False
    )


def test_raising_a_cap_is_a_recorded_local_act_and_the_report_is_the_ledgers(tmp_path) -> None:
    data = tmp_path / "site"
    with PrivacyLedger(data / LEDGER_FILE) as ledger:
        ledger.set_policy(DEFAULTS, set_by="fedshop-site prepare", reason="defaults")
        run_rounds(ledger, DEFAULTS, "run-1", requested=3.0)
        spent = ledger.epsilon("churn", 1e-5)

    refused = fedshop_site("policy", "--data", str(data), "--set", "churn.epsilon-cap=12")
    assert refused.returncode == 2 and "needs --by (who) and --reason (why)" in refused.stderr
    changed = fedshop_site(
        "policy",
        "--data",
        str(data),
        *("--set", "churn.epsilon-cap=12", "--set", "min-cohort=50"),
        *("--by", "dpo@store.example", "--reason", "board decision 2026-11"),
    )
    assert changed.returncode == 0, changed.stderr
    assert "epsilon-cap: 8 per model over the site's lifetime (churn 12)" in changed.stdout
    assert "dpo@store.example: board decision 2026-11" in changed.stdout
    with PrivacyLedger(data / LEDGER_FILE) as ledger:
        history = ledger.policy_history()
    assert [change.set_by for change in history] == ["fedshop-site prepare", "dpo@store.example"]
    assert history[-1].policy.cap_for("churn") == 12.0 and history[-1].policy.min_cohort == 50

    bad = fedshop_site("policy", "--data", str(data), "--set", "epsilon-cap=-3", "--by", "x",
                       "--reason", "y")  # fmt: skip
    assert bad.returncode == 2 and "epsilon-cap must be a finite number > 0" in bad.stderr

    report = fedshop_site("privacy-report", "--data", str(data), "--json")
    assert report.returncode == 0, report.stderr
    [row] = json.loads(report.stdout)
    assert row["model"] == "churn" and row["epsilon"] == spent
    assert row["epsilon-cap"] == 12.0 and row["runs"] == 1 and row["dp-steps"] > 0
    assert row["accountants"] == ["pld"]


def test_prepare_fixes_delta_from_the_sites_size_class_and_records_the_export_period(
    tmp_path,
) -> None:
    frame = generate_orders(n_storefronts=1, n_customers=120, n_items=20, seed=4)
    prepare_storefronts(frame, tmp_path / "split")
    site = next((tmp_path / "split").glob("*/orders.parquet")).parent
    policy = ensure_default_policy(site, set_by="fedshop-site prepare")
    assert policy.delta == 1e-5  # min(1e-5, 1/(10·120)) rounded down to a power of ten
    first, last = frame["timestamp"].min(), frame["timestamp"].max()
    assert policy.data_period == (str(first.date()), str(last.date()))
    assert site_delta(10_001) == 1e-6 and site_delta(250_000) == 1e-7  # classes, not counts
    with PrivacyLedger(site / LEDGER_FILE) as ledger:
        assert ledger.policy() == policy
        [change] = ledger.policy_history()
    assert (change.set_by, change.reason) == (
        "fedshop-site prepare",
        "the defaults, set at first prepare",
    )
