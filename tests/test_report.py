"""The run report and the privacy report, built from a real federated run's directory."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from conftest import SIMULATION_EPSILON as EPSILON
from independent_accounting import matches_ledger_oracle

from models import schema
from privacy.accountants import DEFAULT_ACCOUNTANT
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from server.report import format_value, write_report
from server.run_results import headline_metric, overall_metrics, storefront_metrics
from simulations.privacy_report import (
    PrivacyReportError,
    privacy_report,
    write_ledger_privacy_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Tables(HTMLParser):
    """Cell texts of every ``<table id=...>``, images' ``src``, as the browser sees them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "table":
            self._table = attributes.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attributes["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def records(self, table_id: str) -> list[dict[str, str]]:
        header, *rows = self.tables[table_id]
        return [dict(zip(header, row, strict=True)) for row in rows]


def final_rounds(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    return {record["model"]: record for record in map(json.loads, lines)}  # last one wins


@pytest.fixture(scope="module")
def report(synthetic_run):
    assert synthetic_run.result.returncode == 0, synthetic_run.result.stderr[-3000:]
    path = synthetic_run.run_dir / "report.html"
    return synthetic_run.run_dir, Tables(path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_report_has_its_plots_as_valid_pngs_next_to_it(report):
    run_dir, page = report
    expected = {
        "plots/metric-per-round.png",
        "plots/storefronts-churn.png",
        "plots/storefronts-recommender.png",
        "plots/privacy-utility.png",
    }
    assert set(page.images) == expected
    for source in page.images:
        path = run_dir / source
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = matplotlib.image.imread(path).shape
        assert height >= 300 and width >= 400


@pytest.mark.slow
def test_report_numbers_are_the_last_rounds_of_rounds_jsonl(report):
    run_dir, page = report
    final = final_rounds(run_dir)
    records = page.records("final-overall")
    overall = {row["model"]: row for row in records if row["figures"].startswith("server")}
    exact = {row["model"]: row for row in records if row["figures"].startswith("exact")}
    assert set(overall) == set(exact) == {"churn", "recommender"}
    computed = json.loads((run_dir / "exact-evaluation.json").read_text())
    for model, metrics in computed.items():
        for metric, value in overall_metrics(metrics).items():
            assert exact[model][metric] == format_value(value), (model, metric)
    for model, record in final.items():
        assert overall[model]["round"] == str(record["round"])
        metrics = overall_metrics(record["evaluate-metrics"])
        for metric, value in metrics.items():
            assert overall[model][metric] == format_value(value), (model, metric)
        rows = {row["storefront"]: row for row in page.records(f"final-{model}")}
        for storefront, values in storefront_metrics(record["evaluate-metrics"]).items():
            for metric, value in values.items():
                assert rows[storefront][metric] == format_value(value), (storefront, metric)
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    participation = page.records("participation")
    assert [(row["model"], row["round"], row["accepted"]) for row in participation] == [
        (r["model"], str(r["round"]), str(len(r["accepted"]))) for r in rounds
    ]
    assert headline_metric("recommender", final["recommender"]["evaluate-metrics"]) == "ndcg@10"
    assert headline_metric("churn", final["churn"]["evaluate-metrics"]) == "roc-auc"


@pytest.mark.slow
def test_report_privacy_table_is_the_ledgers_epsilon_and_what_sites_reported(report):
    run_dir, page = report
    final = final_rounds(run_dir)
    rows = page.records("privacy")
    assert len(rows) == 4  # 2 sites x 2 models
    for row in rows:
        reported = final[row["model"]]["privacy"][row["storefront"]]
        assert row["ε reported"] == format_value(reported["epsilon"])
        assert row["ε (ledger)"] == row["ε reported"]
        assert row["accountant"] == "pld"
        assert row["DP steps"] == str(int(reported["dp-steps"]))
        assert row["check"] == "match"
    storefronts = pd.read_csv(run_dir / "storefronts" / "summary.csv")
    shown = page.records("storefronts")
    assert [row["storefront"] for row in shown] == list(storefronts["storefront"])
    assert [row["customers"] for row in shown] == [str(c) for c in storefronts["customers"]]


@pytest.mark.slow
def test_report_holds_no_customer_token(report):
    run_dir, _ = report
    split = run_dir / "storefronts"
    tokens = set()
    for orders in split.glob("*/orders.parquet"):
        tokens |= set(pd.read_parquet(orders, columns=[schema.CUSTOMER])[schema.CUSTOMER])
    assert tokens
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    text += (run_dir / "privacy_report.json").read_text()
    assert not [token for token in tokens if token in text]


@pytest.mark.slow
def test_privacy_report_epsilon_is_an_independent_accountants(synthetic_run):
    for site in privacy_report(synthetic_run.run_dir):
        ledger_file = synthetic_run.run_dir / "sites" / site.slug / LEDGER_FILE
        with PrivacyLedger(ledger_file) as ledger:
            entries = ledger.entries(site.model)
        assert site.accountant == DEFAULT_ACCOUNTANT == entries[0].accountant
        assert matches_ledger_oracle(site.epsilon, entries, site.delta)
        assert site.epsilon <= EPSILON


@pytest.mark.slow
def test_a_site_reporting_less_than_its_ledger_fails_closed(synthetic_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(synthetic_run.run_dir, run_dir, ignore=shutil.ignore_patterns("flwr-home"))
    config = json.loads((run_dir / "config.json").read_text())
    config["run-dir"] = str(run_dir)
    (run_dir / "config.json").write_text(json.dumps(config))
    records = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    storefront = sorted(records[-1]["privacy"])[0]
    records[-1]["privacy"][storefront]["epsilon"] /= 2  # claims half of what it spent
    (run_dir / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    with pytest.raises(PrivacyReportError, match=f"{storefront} \\({records[-1]['model']}\\)"):
        write_ledger_privacy_report(run_dir)
    written = json.loads((run_dir / "privacy_report.json").read_text())["sites"]
    checks = {(s["model"], s["storefront"]): s["check"] for s in written}
    assert checks.pop((records[-1]["model"], storefront)) == "mismatch"
    assert set(checks.values()) == {"match"}


def write_run(run_dir: Path, epsilon: float, ndcg: float, storefronts: Path) -> None:
    """A run directory as the ServerApp leaves it: config and round log (one model)."""
    run_dir.mkdir(parents=True)
    config = {"models": "recommender", "epsilon": epsilon, "storefronts-dir": str(storefronts)}
    (run_dir / "config.json").write_text(json.dumps(config))
    metrics = {"ndcg@10": ndcg, "hr@10": 0.5, "num-customers": 10, "a/ndcg@10": ndcg}
    record = {"model": "recommender", "round": 1, "evaluate-metrics": metrics, "privacy": {}}
    (run_dir / "rounds.jsonl").write_text(json.dumps(record) + "\n")
    (run_dir / "privacy_report.json").write_text(json.dumps({"accountants": {}, "sites": []}))


def test_privacy_utility_curve_takes_every_run_of_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for epsilon, ndcg in ((1.0, 0.11), (3.0, 0.17), (0.0, 0.25)):
        write_run(sweep / f"eps-{epsilon:g}", epsilon, ndcg, tmp_path / "no-split")
    current = tmp_path / "current"
    write_run(current, 8.0, 0.21, tmp_path / "no-split")

    page = Tables(write_report(current, sweep_dir=sweep).read_text(encoding="utf-8"))

    runs = {row["run"]: row for row in page.records("sweep")}
    assert {name: row["recommender NDCG@10"] for name, row in runs.items()} == {
        "current": "0.2100",
        "eps-0": "0.2500",
        "eps-1": "0.1100",
        "eps-3": "0.1700",
    }
    assert (current / "plots" / "privacy-utility.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "plots/privacy-utility.png" in page.images


def test_rewriting_a_report_replaces_its_plots(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, 3.0, 0.2, tmp_path / "no-split")
    write_report(run_dir)
    (run_dir / "plots" / "stale.png").write_bytes(PNG_SIGNATURE)
    write_report(run_dir)
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "metric-per-round.png",
        "privacy-utility.png",
        "storefronts-recommender.png",
    ]
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []
