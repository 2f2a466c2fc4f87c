"""The reference runs beside a simulation (simulations/reference_runs.py): a comparison of
``python -m lab compare`` read into the report's tables and privacy–utility points."""

from __future__ import annotations

import json

import pytest

from server.report import write_report
from server.run_results import load_run
from simulations.errors import ComparisonError
from simulations.reference_runs import beside_comparison, reference_points
from tests.test_report import Tables, write_run


def test_report_shows_the_run_beside_the_reference_comparison(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, 8.0, 0.21, tmp_path / "no-split")
    group = {"overall": {"ndcg@10": 0.29}, "a": {"ndcg@10": 0.27}}
    comparison = {
        "recommender": {
            "runs": {
                "centralized": {"metrics": group},
                "storefront-alone": {"metrics": {"a": {"ndcg@10": 0.2}}},
            },
            "baselines": {"repeat-buy": {"overall": {"ndcg@10": 0.27}}},
        },
        "churn": {"runs": {}},
    }
    reference = tmp_path / "comparison.json"
    reference.write_text(json.dumps(comparison))

    beside = beside_comparison(load_run(run_dir), reference)
    page = Tables(write_report(run_dir, beside=beside).read_text(encoding="utf-8"))

    rows = {row["group"]: row for row in page.records("reference-recommender")}
    assert rows["overall"] == {
        "group": "overall",
        "this run (run)": "0.2100",
        "centralized": "0.2900",
        "storefront-alone": "—",
        "baseline: repeat-buy": "0.2700",
    }
    assert (rows["a"]["this run (run)"], rows["a"]["storefront-alone"]) == ("0.2100", "0.2000")


def test_an_unreadable_reference_is_refused_before_a_report_is_written(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, 8.0, 0.21, tmp_path / "no-split")
    reference = tmp_path / "comparison.json"
    reference.write_text(json.dumps({"recommender": {}}))
    with pytest.raises(ComparisonError, match=f"{reference}: not a comparison"):
        beside_comparison(load_run(run_dir), reference)
    assert not (run_dir / "report.html").exists() and not (run_dir / "plots").exists()


def overall(value: float) -> dict:
    """A comparison run entry with only an overall NDCG@10."""
    return {"metrics": {"overall": {"ndcg@10": value}}}


def test_reference_points_split_dp_curves_from_non_private_levels():
    comparison = {
        "recommender": {
            "runs": {
                "centralized": overall(0.29),
                "centralized-dp-eps-8": {**overall(0.28), "privacy": {"target_epsilon": 8}},
                "centralized-dp-eps-1": {**overall(0.25), "privacy": {"target_epsilon": 1}},
                "federated": {**overall(0.289), "training": {"epsilon": 0.0}},
                "federated-dp-eps-3": {**overall(0.27), "training": {"epsilon": 3.0}},
                "storefront-alone": {"metrics": {"a": {"ndcg@10": 0.2}}},
            }
        }
    }
    curves, levels = reference_points(comparison, "recommender", "ndcg@10")
    assert curves == {"centralized": [(1.0, 0.25), (8.0, 0.28)], "federated": [(3.0, 0.27)]}
    assert levels == {"centralized": 0.29, "federated": 0.289}
    assert reference_points({}, "churn", "roc-auc") == ({}, {})
