"""Centralized, DP and storefront-alone comparison runs (quick mode, small synthetic data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from in_process import read_rounds

from common import wire
from common.console_errors import EXIT_USAGE
from lab import cli
from lab.compare import (
    CENTRALIZED,
    COMPARISON_JSON,
    COMPARISON_MARKDOWN,
    QUICK_EPOCHS,
    STOREFRONT_ALONE,
    dp_run_name,
    run_comparison,
)
from lab.federated_runs import FEDERATED, federated_dp_run_name
from models import metrics, schema
from models.metrics import OUTSIDE_UK
from models.recommender.baselines import NEXT_BASKET_BASELINES
from models.settings_per_epsilon import NON_PRIVATE, settings_for, validation_record
from privacy.ledger import PrivacyLedger
from simulations.storefronts import assign_storefronts
from simulations.synthetic import generate_orders

EPSILONS = (1.0, 8.0)

# The shared fixture trains every run once (about 7 s on 2 busy cores).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory):
    frame = generate_orders(n_storefronts=3, n_customers=300, n_items=60, seed=0)
    out_dir = tmp_path_factory.mktemp("compare")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `python -m lab compare` does: tiny models, busy cores
    try:
        result = run_comparison(frame, out_dir, epsilons=EPSILONS, seed=0, quick=True)
    finally:
        torch.set_num_threads(threads)
    storefronts = set(assign_storefronts(frame)[schema.STOREFRONT])
    return result, out_dir, storefronts


def test_json_on_disk_is_the_result_with_every_run(comparison) -> None:
    result, out_dir, _ = comparison
    assert json.loads((out_dir / COMPARISON_JSON).read_text()) == result
    expected_runs = {CENTRALIZED, STOREFRONT_ALONE, *(dp_run_name(e) for e in EPSILONS)}
    for model in ("recommender", "churn"):
        assert set(result[model]["runs"]) == expected_runs
    assert set(result["recommender"]["baselines"]) == set(NEXT_BASKET_BASELINES)
    overall = result["recommender"]["runs"][CENTRALIZED]["metrics"][metrics.OVERALL]
    assert set(overall) == {"customers", "hr@10", "recall@10", "ndcg@10"}
    assert 0 < overall["ndcg@10"] <= 1
    assert OUTSIDE_UK in result["recommender"]["runs"][CENTRALIZED]["metrics"]
    churn = result["churn"]["runs"][CENTRALIZED]["metrics"][metrics.OVERALL]
    assert {"roc-auc", "pr-auc", "brier"} <= set(churn)
    assert 0 <= churn["brier"] <= 1


def test_dp_runs_spend_close_to_but_not_over_their_target(comparison) -> None:
    result, _, _ = comparison
    for model in ("recommender", "churn"):
        for epsilon in EPSILONS:
            privacy = result[model]["runs"][dp_run_name(epsilon)]["privacy"]
            assert privacy["target_epsilon"] == epsilon
            assert privacy["steps"] == privacy["planned_steps"] > 0
            assert 0.9 * epsilon <= privacy["epsilon"] <= epsilon
            assert 0 < privacy["delta"] <= 1e-5
        sigmas = [result[model]["runs"][dp_run_name(e)]["privacy"] for e in EPSILONS]
        assert sigmas[0]["noise_multiplier"] > sigmas[1]["noise_multiplier"]


def test_dp_runs_train_with_the_settings_of_their_epsilon(comparison) -> None:
    result, _, _ = comparison
    for model in ("recommender", "churn"):
        for epsilon in EPSILONS:
            entry = settings_for(model, "centralized", epsilon)
            training = result[model]["runs"][dp_run_name(epsilon)]["training"]
            assert training["chosen-on"] == entry.chosen_on
            for key in (wire.LEARNING_RATE, wire.BATCH_SIZE, wire.MAX_GRAD_NORM):
                assert training[key] == entry.settings[key]
            assert training[wire.LOCAL_EPOCHS] == QUICK_EPOCHS  # quick mode


def test_every_storefront_has_its_rows(comparison) -> None:
    result, _, storefronts = comparison
    assert len(storefronts) >= 2
    for model in ("recommender", "churn"):
        runs = result[model]["runs"]
        for name in (CENTRALIZED, dp_run_name(EPSILONS[0]), STOREFRONT_ALONE):
            assert storefronts <= set(runs[name]["metrics"]), (model, name)
        alone = runs[STOREFRONT_ALONE]["training"]
        assert set(alone) == storefronts
        # Each storefront-alone model saw only its own customers: fewer than all of them.
        total = runs[CENTRALIZED]["training"]["examples"]
        assert sum(part["examples"] for part in alone.values()) == total
        assert all(0 < part["examples"] < total for part in alone.values())


def test_markdown_puts_runs_and_baselines_side_by_side(comparison) -> None:
    _, out_dir, storefronts = comparison
    text = Path(out_dir / COMPARISON_MARKDOWN).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| group"))
    for column in (CENTRALIZED, dp_run_name(1.0), dp_run_name(8.0), STOREFRONT_ALONE):
        assert f" {column} |" in header
    for storefront in storefronts:
        assert f"| {storefront} |" in text
    assert "privacy of the centralized DP runs" in text


@pytest.mark.parametrize("epsilons", ["1,-3", "1,inf", "one"])
def test_command_refuses_bad_epsilons(epsilons: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["compare", "--out", str(tmp_path), "--epsilons", epsilons])
    assert stopped.value.code == EXIT_USAGE
    assert "--epsilons" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_federated_columns_come_from_real_simulations_of_the_same_storefronts(tmp_path) -> None:
    frame = generate_orders(n_storefronts=3, n_customers=150, n_items=50, seed=1)
    result = run_comparison(frame, tmp_path, epsilons=(8.0,), quick=True, federated=True)
    federated = [FEDERATED, federated_dp_run_name(8.0)]
    for model in ("recommender", "churn"):
        assert list(result[model]["runs"]) == [
            CENTRALIZED,
            dp_run_name(8.0),
            *federated,
            STOREFRONT_ALONE,
        ]
        for name, epsilon in ((federated_dp_run_name(8.0), 8.0), (FEDERATED, NON_PRIVATE)):
            chosen = result[model]["runs"][name]["validation"]
            entry = settings_for(model, "federated", epsilon)
            assert (chosen["epsilon"], chosen["chosen-on"], chosen["score"]) == (
                epsilon,
                entry.chosen_on,
                entry.validation_score,
            )
            trained = result[model]["runs"][name]["training"]  # quick: 1 local epoch
            settings = {k: v for k, v in entry.settings.items() if k != "local-epochs"}
            assert all(trained[f"{model}.{k}"] == v for k, v in settings.items())
    storefronts = set(assign_storefronts(frame)[schema.STOREFRONT])
    centralized = result["recommender"]["runs"][CENTRALIZED]["metrics"]
    tested = {s for s in storefronts if centralized.get(s, {}).get("customers")}
    for name in federated:
        # exact metrics of the final models on every storefront with test customers (the
        # server's own estimates, from the sites' noisy releases, are in rounds.jsonl)
        rows = result["recommender"]["runs"][name]["metrics"]
        assert set(rows) & storefronts == tested
        assert 0 < rows[metrics.OVERALL]["ndcg@10"] <= 1
        assert rows[metrics.OVERALL]["customers"] == sum(
            centralized[storefront]["customers"] for storefront in tested
        )
        final = [r for r in read_rounds(tmp_path / name) if r["model"] == "recommender"][-1]
        estimate = final["evaluate-metrics"]
        assert (
            abs(estimate["ndcg@10"] - rows[metrics.OVERALL]["ndcg@10"])
            <= 4 * estimate["ndcg@10-sd"]
        )
        churn = result["churn"]["runs"][name]["metrics"][metrics.OVERALL]
        assert 0 <= churn["roc-auc"] <= 1
        assert (tmp_path / name / "rounds.jsonl").is_file()
    ledgers = list((tmp_path / federated_dp_run_name(8.0) / "sites").glob("*/*.sqlite"))
    assert len(ledgers) == len(storefronts)
    for ledger_file in (tmp_path / FEDERATED / "sites").glob("*/*.sqlite"):  # non-private:
        with PrivacyLedger(ledger_file) as ledger:  # the sites' consent, and no DP-SGD step
            assert ledger.policy().dp_required is False
            for model in ledger.models():  # only releases: cohort sizes, evaluations
                assert {e.purpose for e in ledger.entries(model)} <= {"cohort", "evaluation"}
    header = (tmp_path / COMPARISON_MARKDOWN).read_text().splitlines()
    assert any(f"| {FEDERATED} | {federated_dp_run_name(8.0)} |" in line for line in header)


def test_each_dp_run_says_how_its_settings_were_chosen_beside_its_test_score(comparison) -> None:
    result, out_dir, _ = comparison
    text = Path(out_dir / COMPARISON_MARKDOWN).read_text()
    assert "## settings per ε: chosen on validation, scored on test" in text
    for model in ("recommender", "churn"):
        for epsilon in EPSILONS:
            run = result[model]["runs"][dp_run_name(epsilon)]
            entry = settings_for(model, "centralized", epsilon)
            assert run["validation"]["score"] == entry.validation_score
            assert run["validation"]["chosen-on"] == entry.chosen_on
            test = run["metrics"][metrics.OVERALL][entry.metric]
            row = f"| {model} | {dp_run_name(epsilon)} | {entry.epsilon:g} | validation |"
            assert any(
                line.startswith(row) and line.endswith(f"| {test:.3f} |")
                for line in text.splitlines()
            )
        # the non-private run trains with, and reports, the settings file's ε = 0 entry
        plain = result[model]["runs"][CENTRALIZED]
        entry = settings_for(model, "centralized", NON_PRIVATE)
        assert plain["validation"]["score"] == entry.validation_score
        expected = {**entry.settings, "local-epochs": QUICK_EPOCHS, "chosen-on": entry.chosen_on}
        assert {k: plain["training"][k] for k in expected} == expected
        assert f"| {model} | {CENTRALIZED} | no DP |" in text


def test_a_set_override_leaves_no_validation_score() -> None:
    changed = validation_record("churn", "centralized", 8.0, {"churn.learning-rate": 0.123})
    assert changed["score"] is None and changed["chosen-on"] == "--set"
    other_model = validation_record("recommender", "centralized", 8.0, {"churn.learning-rate": 1})
    entry = settings_for("recommender", "centralized", 8.0)
    assert (other_model["score"], other_model["chosen-on"]) == (
        entry.validation_score,
        entry.chosen_on,
    )
    assert validation_record("tests.plugin_model", "centralized", 8.0) is None
