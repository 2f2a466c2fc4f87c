"""The rounds and server-optimiser benchmark: what each federation of a variant is run with."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.benchmarks.federated_choices import markdown_row, measure, validation_section
from lab.tuning import FEDERATED_ROUNDS
from models.settings_per_epsilon import settings_for
from models.training import SIMULATION_SEED


def test_each_seed_federates_with_the_epsilons_settings_the_facts_and_the_variant(tmp_path):
    seen: list[tuple[Path, Path, dict]] = []

    def federate(split_dir: Path, run_dir: Path, run_config: dict) -> float:
        seen.append((split_dir, run_dir, run_config))
        return 0.5 + 0.1 * run_config[SIMULATION_SEED]

    split = (tmp_path / "split", {"churn.cutoff": "2011-06-12T00:00:00+00:00"})
    variant = {"server-optimizer": "fedadam", "server-learning-rate": 0.1}
    scores = measure("churn", 3.0, variant, [0, 2], split, tmp_path, federate)

    assert scores == pytest.approx([0.5, 0.7])
    tuned = settings_for("churn", "federated", 3.0).run_config()
    for (split_dir, _, config), seed in zip(seen, [0, 2], strict=True):
        assert split_dir == tmp_path / "split"
        assert config["models"] == "churn" and config["epsilon"] == 3.0
        assert config["num-server-rounds"] == FEDERATED_ROUNDS
        assert tuned.items() <= config.items()
        assert config["churn.cutoff"] == "2011-06-12T00:00:00+00:00"
        assert variant.items() <= config.items()
        assert config[SIMULATION_SEED] == seed
    assert len({run_dir for _, run_dir, _ in seen}) == 2  # fresh site ledgers per run


def test_a_row_shows_the_mean_and_the_range() -> None:
    row = markdown_row("recommender", 8.0, "FedAvg, 4 rounds", [0.28, 0.29])
    assert row == "| recommender | 8 | FedAvg, 4 rounds | 0.2850 | 0.2800–0.2900 |"


def test_a_section_has_its_heading_description_table_and_time() -> None:
    row = markdown_row("churn", 1.0, "width 8", [0.74, 0.75])
    text = validation_section("Checks on validation", "Command: `x`.", [row], 12.4)
    assert text.splitlines() == [
        "## Checks on validation",
        "",
        "Command: `x`.",
        "",
        "| model | ε | choice | validation (mean) | min–max over seeds |",
        "|---|---:|---|---:|---:|",
        row,
        "",
        "Total time 12 s.",
    ]
