"""The settings per model, mode and ε: complete, honest about their provenance, looked up
by nearest ε, overridden by ``--set``, and what ``run`` and ``compare`` train with."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from common import wire
from lab import cli as lab_cli
from lab.compare import centralized_dp_settings
from models import BUILTIN_MODELS
from models.settings_per_epsilon import (
    MODES,
    NON_PRIVATE,
    TARGET_WINDOW,
    UNTUNED,
    EpsilonSettings,
    federated_run_config,
    load_entries,
    record,
    settings_epsilon,
    settings_file,
    settings_for,
)
from models.study import validation_note
from models.training import TrainingSettings
from simulations import cli, jobs
from simulations.jobs import with_settings_per_epsilon
from simulations.run_configs import MAIN_RUN_CONFIG


def test_every_model_mode_and_epsilon_has_valid_settings() -> None:
    entries = {(e.model, e.mode, e.epsilon): e for e in load_entries()}
    for model in BUILTIN_MODELS:
        for mode in MODES:
            for epsilon in (NON_PRIVATE, 1.0, 3.0, 8.0):
                entry = entries[(model, mode, epsilon)]
                assert isinstance(entry.training(), TrainingSettings)
                assert entry.metric == {"recommender": "ndcg@10", "churn": "roc-auc"}[model]


def test_an_entry_claims_only_the_tuning_that_happened() -> None:
    for entry in load_entries():
        if entry.chosen_on == UNTUNED:
            assert entry.validation_score is None and entry.trials == 0 and not entry.seeds
            assert entry.note  # how the values were picked before
        else:
            assert entry.chosen_on == validation_note(entry.model)  # what `tune` scores on
            assert 0 < entry.validation_score <= 1
            assert entry.trials >= 1 and entry.seeds and entry.data


def test_nearest_epsilon_with_ties_to_the_smaller() -> None:
    nearest = {
        epsilon: settings_for("recommender", "centralized", epsilon).epsilon
        for epsilon in (0.1, 1.0, 2.0, 2.5, 5.0, 5.6, 8.0, 50.0)
    }
    assert nearest == {
        0.1: 1.0,
        1.0: 1.0,
        2.0: 1.0,
        2.5: 3.0,
        5.0: 3.0,
        5.6: 8.0,
        8.0: 8.0,
        50.0: 8.0,
    }
    # a run's ε ≤ 0 is no DP: the non-private entry, never the nearest of a DP run
    assert [settings_epsilon(e) for e in (-1, 0, 0.5, 8)] == [NON_PRIVATE, NON_PRIVATE, 0.5, 8.0]
    assert settings_for("churn", "federated", 0.0).epsilon == NON_PRIVATE
    assert settings_for("churn", "federated", 1e-6).epsilon == 1.0
    with pytest.raises(ValueError, match="ε > 0 .DP. or ε = 0 .no DP."):
        settings_for("churn", "federated", -1.0)


def test_overrides_replace_only_their_model_and_knobs_reach_the_run_config() -> None:
    entry = centralized_dp_settings("recommender", 3.0, {"recommender.learning-rate": 0.25})
    assert entry.training().learning_rate == 0.25
    assert (
        entry.training().batch_size
        == settings_for("recommender", "centralized", 3).settings[wire.BATCH_SIZE]
    )
    churn = centralized_dp_settings("churn", 3.0, {"recommender.learning-rate": 0.25})
    assert churn == settings_for("churn", "centralized", 3.0)
    config = federated_run_config(
        ["recommender", "my_package.plugin"], 8.0, {"recommender.target-window": 3}
    )
    knobs = {f"recommender.{key}" for key in (*wire.MODEL_TRAINING_KEYS, TARGET_WINDOW)}
    assert set(config) == knobs
    assert config[f"recommender.{TARGET_WINDOW}"] == 3


def test_record_replaces_one_entry_and_reads_back(tmp_path: Path) -> None:
    for model in BUILTIN_MODELS:
        (tmp_path / model).mkdir()
        shutil.copy(settings_file(model), settings_file(model, tmp_path))
    before = load_entries(tmp_path)
    entry = EpsilonSettings(
        model="churn",
        mode="centralized",
        epsilon=3.0,
        settings={**settings_for("churn", "centralized", 3.0).settings, wire.LEARNING_RATE: 0.1},
        metric="roc-auc",
        validation_score=0.7,
        chosen_on="validation (churn: cutoff one horizon before the test cutoff)",
        data="synthetic",
        seeds=[0],
        trials=4,
        note="a test",
    )
    record(entry, tmp_path)
    after = load_entries(tmp_path)
    assert settings_for("churn", "centralized", 3.0, tmp_path) == entry
    assert len(after) == len(before)
    assert [e for e in after if e != entry] == [
        e for e in before if e.epsilon != 3.0 or (e.model, e.mode) != ("churn", "centralized")
    ]
    # A plug-in has no settings file: its defaults are not silently overwritten by one.
    with pytest.raises(ValueError, match="model tests.plugin_model has no settings file"):
        record(replace(entry, model="tests.plugin_model"), tmp_path)
    assert load_entries(tmp_path) == after


def run_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["run", "--bundled", "--out", "x", *argv])


def test_run_trains_with_the_federated_settings_of_the_nearest_epsilon() -> None:
    config = with_settings_per_epsilon(jobs.training_config(run_args("--epsilon", "2.5"), {}))
    expected = settings_for("recommender", "federated", 3.0).run_config()
    assert {key: config[key] for key in expected} == expected
    assert config["epsilon"] == 2.5
    # --set wins over the file; without --epsilon, the app's default ε (8) picks the entry.
    args = run_args("--set", "recommender.learning-rate=0.5", "--models", "recommender")
    config = with_settings_per_epsilon(jobs.training_config(args, {}))
    assert config["recommender.learning-rate"] == 0.5
    eight = settings_for("recommender", "federated", 8.0).settings
    assert config["recommender.batch-size"] == eight[wire.BATCH_SIZE]
    assert not any(key.startswith("churn.") for key in config)
    # Without DP (ε ≤ 0) the non-private entries apply, never a DP one.
    for epsilon in ("0", "-1"):
        plain = jobs.training_config(run_args("--epsilon", epsilon), {})
        expected = {
            **settings_for("recommender", "federated", NON_PRIVATE).run_config(),
            **settings_for("churn", "federated", NON_PRIVATE).run_config(),
            **plain,
        }
        assert with_settings_per_epsilon(plain) == expected


def test_the_main_job_trains_with_the_settings_of_its_epsilon_over_its_run_level_config():
    config = with_settings_per_epsilon({}, MAIN_RUN_CONFIG)
    for model in ("churn", "recommender"):
        expected = settings_for(model, "federated", MAIN_RUN_CONFIG["epsilon"]).run_config()
        assert {key: config[key] for key in expected} == expected  # epochs included
    for key in ("models", "epsilon", "num-server-rounds"):
        assert config[key] == MAIN_RUN_CONFIG[key]
    # the command line wins, and its ε picks the entry
    config = with_settings_per_epsilon({"epsilon": 1.0, "churn.batch-size": 7}, MAIN_RUN_CONFIG)
    one = settings_for("churn", "federated", 1.0).run_config()
    assert config["churn.learning-rate"] == one["churn.learning-rate"]
    assert config["churn.batch-size"] == 7


def test_compare_takes_set_assignments() -> None:
    args = lab_cli.build_parser().parse_args(
        [
            "compare",
            "--out",
            "x",
            "--set",
            "recommender.learning-rate=1.5",
            "--set",
            f"recommender.{TARGET_WINDOW}='all'",
        ]
    )
    assert dict(args.set) == {
        "recommender.learning-rate": 1.5,
        f"recommender.{TARGET_WINDOW}": "all",
    }
    with pytest.raises(SystemExit):
        lab_cli.build_parser().parse_args(["compare", "--out", "x", "--set", "no-equals-sign"])


def test_a_deployment_trains_what_a_simulation_at_the_same_epsilon_trains(tmp_path) -> None:
    """``fedshop-server submit`` sends the app's run config with the central team's facts;
    the empty settings of pyproject's tables are the entry validated for its ε, the same
    local training ``fedshop-sim run`` plans, and config.json names the entry."""
    from server.server_app import plan_models, validated_settings_record
    from simulations.runner import app_run_config

    catalogue = tmp_path / "catalogue.txt"
    catalogue.write_text("".join(f"item-{number}\n" for number in range(40)))
    facts = {"recommender.catalogue": str(catalogue), "churn.cutoff": "2011-09-10T12:50:00Z"}
    for epsilon in (8.0, 3.0, 0.0):
        deployed = {**app_run_config(), **facts, "epsilon": epsilon}
        simulated = {**app_run_config(), **facts, **with_settings_per_epsilon({"epsilon": epsilon})}
        deployment, simulation = plan_models(deployed), plan_models(simulated)
        assert [r.train_config for r in deployment] == [r.train_config for r in simulation]
        for run in deployment:
            entry = settings_for(run.model.name, "federated", epsilon)
            assert {k: run.train_config[k] for k in wire.MODEL_TRAINING_KEYS} == {
                k: entry.settings[k] for k in wire.MODEL_TRAINING_KEYS
            }
        recommender = next(run for run in deployment if run.model.name == "recommender")
        window = settings_for("recommender", "federated", epsilon).settings["target-window"]
        assert recommender.facts["target-window"] == window
        record = validated_settings_record(deployed)
        assert record["churn"]["chosen-on"].startswith("validation")
    # A value the central team sets wins, and the record says the entry was replaced.
    overridden = {**app_run_config(), **facts, "epsilon": 8.0, "churn.learning-rate": 0.01}
    [churn, _] = plan_models(overridden)
    assert churn.train_config[wire.LEARNING_RATE] == 0.01
    assert validated_settings_record(overridden)["churn"]["chosen-on"] == "--set"
