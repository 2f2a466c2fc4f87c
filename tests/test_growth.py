"""The growth benchmark's measuring parts: which processes belong to a run, their memory,
the cells and the table and plot of recorded results."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest

from lab.benchmarks.growth import (
    Cell,
    load_results,
    markdown_table,
    plot,
    process_memory,
    run_processes,
    site_outcomes,
)


def test_a_cell_is_storefronts_x_customers() -> None:
    assert Cell.parse("1000x1000000") == Cell(1000, 1_000_000)
    with pytest.raises(argparse.ArgumentTypeError, match="STOREFRONTSxCUSTOMERS"):
        Cell.parse("1000")


def test_a_run_is_its_descendants_and_every_process_of_its_flwr_home(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    home.mkdir()
    child = subprocess.Popen(["sleep", "30"])
    # started elsewhere (as Ray's daemons are, re-parented to init), but of the run's home
    daemon = subprocess.Popen(["sleep", "30"], env={**os.environ, "FLWR_HOME": str(home)})
    stranger = subprocess.Popen(["sleep", "30"], env={**os.environ, "FLWR_HOME": "/elsewhere"})
    try:
        found = run_processes(child.pid, home)
        assert {child.pid, daemon.pid} <= found
        assert stranger.pid not in found
        name, rss, pss = process_memory(os.getpid())
        assert rss > 10 * 1024 * 1024 and 0 < pss <= rss
    finally:
        for process in (child, daemon, stranger):
            process.kill()
            process.wait()
    assert process_memory(child.pid) is None


def test_sites_table_and_plot_come_from_the_recorded_runs(tmp_path: Path) -> None:
    index = tmp_path / "storefronts.json"
    index.write_text(
        json.dumps(
            {"storefronts": [{"name": "a", "customers": 90}, {"name": "b", "customers": 10}]}
        )
    )
    rounds = tmp_path / "rounds.jsonl"
    rounds.write_text(
        json.dumps({"model": "churn", "round": 1, "accepted": ["a", "b"], "declined": ["c: x"]})
        + "\n"
    )
    sites = site_outcomes(rounds, index)
    assert sites == {
        "churn": {
            "sampled": 3,
            "accepted": 2,
            "declined": 1,
            "failed": 0,
            "rejected": 0,
            "largest": 90,
        }
    }
    results = tmp_path / "results.jsonl"
    for customers, seconds in ((10_000, 50.0), (100_000, 90.0), (10_000, 40.0)):
        record = {
            "storefronts": 10,
            "customers": customers,
            "order_lines": 20 * customers,
            "exit_code": 0,
            "wall_seconds": 2 * seconds,
            "load_before": 3.0,
            "load_after": 4.0,
            "peak": {"rss": 2**31, "pss": 2**30, "federation_rss": 2**31},
            "steps": {"generate synthetic order lines": 1.0},
            "rounds": {"churn": seconds, "recommender": 1.0},
            "sites": sites,
        }
        with results.open("a") as file:
            file.write(json.dumps(record) + "\n")
    records = load_results(results)
    assert [r["rounds"]["churn"] for r in records] == [40.0, 90.0]  # a cell run again: last
    table = markdown_table(records)
    assert (
        "| 10 | 10,000 | 200,000 | 41 (40 + 1) | 1 | 80 | 2.00 (2.00) | 1.00 | 3 / 2 / 1 / 0 | 90 |"
        in table
    )
    plot(records, tmp_path / "growth.png")
    assert (tmp_path / "growth.png").stat().st_size > 10_000
