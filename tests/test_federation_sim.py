"""The real ServerApp loop and the real ClientApp handlers in Flower's simulation.

Tiny synthetic storefronts (3 sites), 2 rounds, user-level DP. Flower's ``run_simulation``
cannot pass a run config, so the ServerApp here calls the real ``run_federation`` with it
and the ClientApp hands it to the real handlers of :mod:`clients.client_app` through the
node's Context — everything else is what ``flwr run`` executes.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from in_process import read_rounds, simulate_federation
from independent_accounting import matches_ledger_oracle

from lab.sequential import run_sequential_federation
from models.registry import get_model
from privacy.accountants import DPSegment
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from server.bundle import load_bundle
from server.server_app import plan_models, run_federation
from simulations.exact_evaluation import exact_metrics
from simulations.runner import app_run_config
from simulations.shared_facts import with_split_facts
from simulations.site_policies import apply_site_policy
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders

pytestmark = pytest.mark.slow

SITES = 3
MODEL = "recommender"


@pytest.fixture(scope="module")
def storefronts(tmp_path_factory):
    frame = generate_orders(
        n_storefronts=SITES, n_customers=300, n_items=200, seed=7, largest_share=None
    )
    split = tmp_path_factory.mktemp("split") / "storefronts"
    prepare_storefronts(frame, split)
    return split


def run_config_for(storefronts, run_dir, **overrides):
    return with_split_facts(
        {
            **app_run_config(),
            "models": MODEL,
            "storefronts-dir": str(storefronts),
            "run-dir": str(run_dir),
            "num-server-rounds": 2,
            "epsilon": 3.0,
            "min-sites": 2,
            f"{MODEL}.local-epochs": 1,
            f"{MODEL}.optimizer": "adam",
            f"{MODEL}.learning-rate": 0.05,
            f"{MODEL}.batch-size": 32,
            f"{MODEL}.max-grad-norm": 1.0,
            **overrides,
        }
    )


SITE_POLICY = ["min-cohort=5", "cohort-noise=3"]
"""The simulated sites' policy: the smallest storefront has about 30 training and 38
held-out recommender customers, released with the noise of three customers, so a site
falls below its minimum cohort of 5 in far fewer than one run in a million (at the
default 20 these small storefronts would decline now and then)."""


def simulate(run_config: dict, site_policy: list[str] = SITE_POLICY) -> None:
    storefronts, run_dir = Path(run_config["storefronts-dir"]), Path(run_config["run-dir"])
    apply_site_policy(storefronts, run_dir, site_policy, set_by="test")
    simulate_federation(lambda grid, _: run_federation(grid, run_config), run_config, SITES)


def test_sites_train_under_dp_report_their_ledger_epsilon_and_a_spent_site_is_declined(
    storefronts, tmp_path, monkeypatch
):
    # One simulation (Ray's start-up dominates the time) covers both behaviours.
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    run_dir = tmp_path / "run"
    slugs = sorted(p.name for p in storefronts.iterdir() if p.is_dir())
    *training, spent = slugs
    with PrivacyLedger(run_dir / "sites" / spent / LEDGER_FILE) as ledger:
        # An earlier run already spent more than this run's budget.
        ledger.reserve(
            MODEL,
            DPSegment(1.0, 1.0, 20),
            budget_epsilon=100.0,
            delta=1e-5,
            max_grad_norm=1.0,
            accountant="rdp",
        )
    simulate(run_config_for(storefronts, run_dir))

    rounds = read_rounds(run_dir)
    assert [(r["model"], r["round"]) for r in rounds] == [(MODEL, 1), (MODEL, 2)]
    for record in rounds:
        assert sorted(record["accepted"]) == training  # storefront names equal slugs here
        [declined] = record["declined"]
        assert f"privacy-budget-exhausted ({spent}): " in declined
        assert record["failed"] == record["rejected"] == []
        assert spent not in record["privacy"]
    assert rounds[0]["evaluate-metrics"] == {}  # the final model alone is evaluated
    evaluation = rounds[-1]["evaluate-metrics"]  # a spent site releases nothing, not even this
    [refused] = rounds[-1]["evaluation-refused"]
    assert f"privacy-budget-exhausted ({spent}): " in refused
    assert 0 <= evaluation["ndcg@10"] <= 1 and evaluation["ndcg@10-sd"] > 0
    assert evaluation["num-customers"] == sum(
        evaluation[f"{slug}/num-customers"] for slug in training
    )
    with PrivacyLedger(run_dir / "sites" / spent / LEDGER_FILE) as ledger:
        assert len(ledger.entries(MODEL)) == 1  # declining spent nothing

    for slug in training:
        reported = rounds[-1]["privacy"][slug]
        with PrivacyLedger(run_dir / "sites" / slug / LEDGER_FILE) as ledger:
            entries = ledger.entries(MODEL)
            ledger_epsilon = ledger.epsilon(MODEL, reported["delta"])
        trained = [e for e in entries if e.purpose == "training"]
        assert [e.server_round for e in trained] == [1, 2]
        assert [e.purpose for e in entries if e.purpose != "training"] == ["cohort", "evaluation"]
        assert all(e.status == "committed" for e in entries)
        assert reported["dp-steps"] == sum(e.segment.steps for e in trained)
        assert reported["epsilon"] == ledger_epsilon
        assert matches_ledger_oracle(reported["epsilon"], entries, reported["delta"])
        # σ was calibrated for both rounds: the plan ends just inside the budget.
        assert 0.99 * 3.0 <= reported["epsilon"] <= 3.0
        assert rounds[0]["privacy"][slug]["epsilon"] < reported["epsilon"]

    manifest = json.loads((run_dir / "bundle" / "manifest.json").read_text())
    assert manifest["models"][MODEL]["rounds-done"] == 2


def test_the_sequential_reference_trains_what_the_simulation_trains(
    storefronts, tmp_path, monkeypatch
):
    # The federation-cost benchmark divides by this one-process run: it must be the same work.
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    config = run_config_for(storefronts, tmp_path / "simulated", **{"num-server-rounds": 1})
    simulate(config)
    simulated = read_rounds(tmp_path / "simulated")[-1]

    apply_site_policy(storefronts, tmp_path / "sequential", SITE_POLICY, set_by="test")
    result = run_sequential_federation(storefronts, tmp_path / "sequential", config)

    [sequential] = result.metrics[MODEL]
    assert result.declined[MODEL] == [] and result.seconds > 0
    # The same work: every site trains, releases and evaluates as in the simulation (the
    # released cohort sizes are fresh noise in each, so the plans, not the weights, agree).
    for run_dir in ("simulated", "sequential"):
        for slug in simulated["accepted"]:
            with PrivacyLedger(tmp_path / run_dir / "sites" / slug / LEDGER_FILE) as ledger:
                purposes = [entry.purpose for entry in ledger.entries(MODEL)]
            assert purposes == ["cohort", "training", "evaluation"], (run_dir, slug)
    assert set(sequential) == set(simulated["evaluate-metrics"])
    _, exported = load_bundle(tmp_path / "simulated" / "bundle")
    assert result.weights[MODEL].keys() == exported[MODEL].keys()
    facts = plan_models(config)[0].facts
    on_simulated = exact_metrics(storefronts, MODEL, exported[MODEL], facts)
    for metric in ("hr@10", "ndcg@10"):
        assert result.exact[MODEL][metric] == pytest.approx(on_simulated[metric], abs=0.05)


def test_a_plug_in_model_trains_through_the_registry_alone(storefronts, tmp_path, monkeypatch):
    # tests.plugin_model is named nowhere in server/, clients/ or simulations/: the run
    # config's "models" is all it takes, with its default training settings.
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    run_dir = tmp_path / "run"
    plugin = "tests.plugin_model"
    # the sites train it only because their policy names it
    policy = [*SITE_POLICY, f"models='churn,recommender,{plugin}'"]
    simulate(run_config_for(storefronts, run_dir, models=plugin, epsilon=3.0), policy)

    rounds = read_rounds(run_dir)
    assert [(r["model"], r["round"]) for r in rounds] == [(plugin, 1), (plugin, 2)]
    slugs = sorted(p.name for p in storefronts.iterdir() if p.is_dir())
    for record in rounds:
        assert sorted(record["accepted"]) == slugs
        assert record["failed"] == record["rejected"] == record["declined"] == []
    evaluation = rounds[-1]["evaluate-metrics"]
    evaluated = [slug for slug in slugs if f"{slug}/num-customers" in evaluation]
    assert len(evaluated) + len(rounds[-1]["suppressed"]) == len(slugs) and evaluated
    assert evaluation["num-customers"] == sum(
        evaluation[f"{slug}/num-customers"] for slug in evaluated
    )
    # Trained: the pooled error is below the untrained model's, under DP (exact figures).
    _, exported = load_bundle(run_dir / "bundle")
    facts = plan_models(run_config_for(storefronts, run_dir, models=plugin))[0].facts
    untrained = get_model(plugin).initial_weights(facts)
    trained = exact_metrics(storefronts, plugin, exported[plugin], facts)["mse"]
    assert 0 < trained < exact_metrics(storefronts, plugin, untrained, facts)["mse"]
    for slug in slugs:
        with PrivacyLedger(run_dir / "sites" / slug / LEDGER_FILE) as ledger:
            entries = ledger.entries(plugin)
        reported = rounds[-1]["privacy"][slug]
        assert [e.server_round for e in entries if e.purpose == "training"] == [1, 2]
        assert matches_ledger_oracle(reported["epsilon"], entries, reported["delta"])
        # The plan reaches 3 with the run's evaluation; a suppressed one is not spent.
        evaluated = any(e.purpose == "evaluation" for e in entries)
        assert (0.99 if evaluated else 0.9) * 3.0 <= reported["epsilon"] <= 3.0
    manifest = json.loads((run_dir / "bundle" / "manifest.json").read_text())
    assert manifest["models"][plugin]["rounds-done"] == 2


def test_the_simulation_seed_changes_a_sequential_federation(storefronts, tmp_path):
    """The seed drives the initial weights, sampling, target draws and DP-SGD noise; the
    released cohort sizes come from OpenDP's secure sampler, which no seed reproduces."""

    def final_weights(name: str, seed: int) -> dict[str, np.ndarray]:
        run_dir = tmp_path / name
        config = run_config_for(
            storefronts, run_dir, **{"num-server-rounds": 1, "simulation-seed": seed}
        )
        apply_site_policy(storefronts, run_dir, SITE_POLICY, set_by="test")
        return run_sequential_federation(storefronts, run_dir, config).weights[MODEL]

    first, other = final_weights("a", 0), final_weights("c", 1)
    assert first.keys() == other.keys()
    assert any(not np.array_equal(array, other[name]) for name, array in first.items())


@pytest.mark.parametrize("seed", [-1, 1.5, "x"])
def test_a_bad_simulation_seed_is_refused_before_any_round(seed):
    with pytest.raises(ValueError, match="simulation-seed"):
        plan_models({**app_run_config(), "models": MODEL, "simulation-seed": seed})
