"""The run report: ``report.html`` with PNG plots, built from a run directory.

Reads what a run left behind — the resolved config (``config.json``), the per-round log
(``rounds.jsonl``: per model and round, the pooled evaluation metrics overall and as
``<storefront>/<metric>``), the privacy report (:mod:`server.privacy_report`) and the
storefront split (summary and ingest counts) — and writes::

    <run-dir>/report.html                  tables and plots, self-contained but for the PNGs
    <run-dir>/plots/metric-per-round.png   headline metric per round, overall and per storefront
    <run-dir>/plots/storefronts-<model>.png  final round's headline metric per storefront
    <run-dir>/plots/privacy-utility.png    final headline metric against ε

The privacy–utility curve takes one point per run: the runs of a sweep directory (each
subdirectory with a ``config.json`` and ``rounds.jsonl``) plus this run. Non-private runs
(ε ≤ 0) are drawn as a horizontal line. Only aggregate metrics are read, so no customer
token can reach the report. Everything is built in a staging directory and moved into
place at the end: a failed report leaves the previous one intact.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

from common import wire  # noqa: E402
from common.atomic_files import atomic_write  # noqa: E402
from models.registry import BUILTIN_MODELS, get_model  # noqa: E402
from models.schema import SUMMARY_FILE  # noqa: E402
from privacy.accountants import create_accountant  # noqa: E402
from server.privacy_report import (  # noqa: E402
    PRIVACY_REPORT,
    SitePrivacy,
    load_privacy_report,
    reported_privacy,
)
from server.run_files import RESOLVED_CONFIG, ROUNDS_LOG  # noqa: E402
from server.run_results import (  # noqa: E402
    STOREFRONT_SEPARATOR,
    RunResults,
    headline_metric,
    load_run,
    overall_metrics,
    storefront_metrics,
)

REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
INGEST_REPORT = "ingest_report.json"


@dataclass(frozen=True)
class Beside:
    """Other runs' figures to show beside this run's (e.g. a researcher's reference runs).

    ``tables``: per model, its headline metric by group (column ``group``, one column per
    run) under a heading after the final metrics, introduced by ``title`` and ``note``;
    ``curves`` and ``levels``: per model, DP runs as (ε, value) points by family and
    non-private runs as values by name, drawn on the privacy–utility plot.
    """

    title: str
    note: str
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    curves: Mapping[str, Mapping[str, list[tuple[float, float]]]] = field(default_factory=dict)
    levels: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def write_report(
    run_dir: Path, *, sweep_dir: Path | None = None, beside: Beside | None = None
) -> Path:
    """Write ``report.html`` and its plots for ``run_dir``; returns the HTML's path.

    Args:
        run_dir: a run directory written by the ServerApp (``config.json``, ``rounds.jsonl``).
        sweep_dir: optional directory of sibling runs (e.g. other ε) for the
            privacy–utility curve.
        beside: other runs' figures shown beside this run's.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    privacy = _load_privacy(run)
    sweep = [run, *(r for r in _sweep_runs(sweep_dir) if r.run_dir.resolve() != run_dir.resolve())]
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".report-"))
    try:
        plots = staging / PLOTS_DIR
        plots.mkdir()
        figures = [
            ("Metric per round", _plot_rounds(run, plots / "metric-per-round.png")),
            *(
                (f"Per storefront, final round: {model}", path)
                for model, path in _plot_storefronts(run, plots).items()
            ),
            (
                "Privacy–utility",
                _plot_privacy_utility(sweep, plots / "privacy-utility.png", beside),
            ),
        ]
        shown = [(t, p) for t, p in figures if p is not None]
        page = _html_page(run, privacy, sweep, shown, _beside_sections(run, beside))
        _replace(staging / PLOTS_DIR, run_dir / PLOTS_DIR)
        atomic_write(run_dir / REPORT_FILE, page, mode=0o644)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return run_dir / REPORT_FILE


def _load_privacy(run: RunResults) -> list[SitePrivacy]:
    if (run.run_dir / PRIVACY_REPORT).is_file():
        return load_privacy_report(run.run_dir)
    return reported_privacy([record for records in run.rounds.values() for record in records])


def _sweep_runs(sweep_dir: Path | None) -> list[RunResults]:
    if sweep_dir is None:
        return []
    candidates = sorted(p for p in Path(sweep_dir).iterdir() if (p / RESOLVED_CONFIG).is_file())
    return [load_run(p) for p in candidates if (p / ROUNDS_LOG).is_file()]


def _plot_rounds(run: RunResults, path: Path) -> Path | None:
    models = [m for m in run.rounds if run.final(m)]
    if not models:
        return None
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        metric = headline_metric(model, run.final(model))
        records = run.rounds[model]
        rounds = [r["round"] for r in records]
        for storefront in storefront_metrics(run.final(model)):
            key = f"{storefront}{STOREFRONT_SEPARATOR}{metric}"
            values = [r.get("evaluate-metrics", {}).get(key, math.nan) for r in records]
            axis.plot(rounds, values, linewidth=0.8, alpha=0.6, label=storefront)
        overall = [r.get("evaluate-metrics", {}).get(metric, math.nan) for r in records]
        axis.plot(rounds, overall, color="black", linewidth=2.2, marker="o", label="overall")
        axis.set(title=model, xlabel="round", ylabel=_label(metric))
        axis.set_xticks(rounds)
        axis.legend(fontsize=7)
    return _save(figure, path)


def _plot_storefronts(run: RunResults, plots: Path) -> dict[str, Path]:
    paths = {}
    for model in run.rounds:
        final = run.final(model)
        per_storefront = storefront_metrics(final)
        if not per_storefront:
            continue
        metric = headline_metric(model, final)
        names = list(per_storefront)
        values = [per_storefront[n].get(metric, math.nan) for n in names]
        figure, axis = plt.subplots(figsize=(max(5.0, 0.8 * len(names) + 2), 4))
        axis.bar(range(len(names)), values, color="tab:blue")
        axis.axhline(final.get(metric, math.nan), color="black", linestyle="--", label="overall")
        labels = [f"{n}\n(n={per_storefront[n].get('num-customers', '?')})" for n in names]
        axis.set_xticks(range(len(names)), labels, rotation=30, ha="right", fontsize=8)
        axis.set(title=f"{model}, round {run.rounds[model][-1]['round']}", ylabel=_label(metric))
        axis.legend(fontsize=8)
        paths[model] = _save(figure, plots / f"storefronts-{model}.png")
    return paths


def _plot_privacy_utility(
    runs: list[RunResults], path: Path, beside: Beside | None = None
) -> Path | None:
    """Final metric against ε over the runs; this run (``runs[0]``) also round by round,
    at the largest ε any site had spent after that round; and the runs ``beside``, dotted."""
    models = sorted({m for run in runs for m in run.rounds if run.final(m)})
    if not models:
        return None
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        metric = headline_metric(model, runs[0].final(model) or {})
        by_round = _round_points(runs[0], model, metric)
        if by_round:
            axis.plot(
                *zip(*by_round, strict=True),
                marker=".",
                color="tab:gray",
                label="this run, by round",
            )
        finals = sorted(
            (run.epsilon, run.final(model)[metric])
            for run in runs
            if run.epsilon > 0 and metric in run.final(model)
        )
        if finals:
            axis.plot(*zip(*finals, strict=True), marker="o", label="runs (ε budget), final round")
        for run in runs:
            if run.epsilon <= 0 and metric in run.final(model):
                axis.axhline(run.final(model)[metric], linestyle="--", label="no DP, final round")
        curves = beside.curves.get(model, {}) if beside else {}
        levels = beside.levels.get(model, {}) if beside else {}
        for family, points in curves.items():
            axis.plot(*zip(*points, strict=True), marker="s", linestyle=":", label=f"{family} DP")
        for name, value in levels.items():
            axis.axhline(value, linestyle=":", linewidth=1, color="tab:gray", alpha=0.6)
            axis.annotate(
                f"{name}, no DP", (1.0, value), xycoords=("axes fraction", "data"), fontsize=7
            )
        axis.set(title=model, xlabel="ε per site", ylabel=_label(metric))
        axis.set_xscale("log")
        budgets = sorted({e for e, _ in finals} | {e for p in curves.values() for e, _ in p})
        if budgets:  # tick the ε budgets themselves: "1", "3", "8", not "3×10⁰"
            axis.set_xticks(budgets)
            axis.xaxis.set_minor_formatter(NullFormatter())
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.legend(fontsize=8)
    return _save(figure, path)


def _round_points(run: RunResults, model: str, metric: str) -> list[tuple[float, float]]:
    """(largest ε a site reported after the round, the round's metric), per round."""
    points = []
    for record in run.rounds.get(model, []):
        spent = [site["epsilon"] for site in record.get("privacy", {}).values()]
        value = record.get("evaluate-metrics", {}).get(metric)
        if spent and value is not None:
            points.append((max(spent), value))
    return points


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
    return path


def _label(metric: str) -> str:
    """A metric's name as the models label it (the first model that does)."""
    for name in BUILTIN_MODELS:
        label = get_model(name).metric_labels.get(metric)
        if label is not None:
            return label
    return metric


def _html_page(
    run: RunResults,
    privacy: list[SitePrivacy],
    sweep: list[RunResults],
    figures: list[tuple[str, Path]],
    beside_references: list[str],
) -> str:
    config = run.config
    title = f"fedshop run report: {run.run_dir.name}"
    sections = [
        f"<h1>{_e(title)}</h1>",
        "<p>Models: {}; {} rounds; ε = {} per site and model; aggregation {}.</p>".format(
            _e(str(config.get("models"))),
            _e(str(config.get("num-server-rounds"))),
            _e(str(config.get("epsilon"))),
            _e(str(config.get("aggregation"))),
        ),
        "<h2>Final metrics, overall</h2>",
        _table(_final_overall(run), "final-overall"),
        *beside_references,
        "<h2>Final metrics per storefront</h2>",
        *(
            f"<h3>{_e(model)}</h3>" + _table(frame, f"final-{model}")
            for model, frame in _final_per_storefront(run).items()
        ),
        "<h2>Site participation per round</h2>",
        _table(_participation_frame(run), "participation"),
        *(f"<h2>{_e(t)}</h2><img src='{PLOTS_DIR}/{p.name}' alt='{_e(t)}'>" for t, p in figures),
        "<h2>Privacy report</h2>",
        f"<p>Accountants: {_e(_accountants(privacy))}. ε is recomputed from each site's privacy "
        "ledger, by the accountant that planned its steps, and checked against what the site "
        "reported.</p>",
        _table(_privacy_frame(privacy), "privacy"),
    ]
    if len(sweep) > 1:
        sections += [
            "<h2>Runs on the privacy–utility curve</h2>",
            _table(_sweep_frame(sweep), "sweep"),
        ]
    sections += _storefront_sections(run)
    sections += ["<h2>Resolved run config</h2>", _table(_config_frame(config), "config")]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:80em}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{style}</style></head><body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def _beside_sections(run: RunResults, beside: Beside | None) -> list[str]:
    if beside is None:
        return []
    sections = [f"<h2>{_e(beside.title)}</h2>", f"<p>{_e(beside.note)}</p>"]
    for model in run.rounds:
        if model in beside.tables:
            sections.append(f"<h3>{_e(model)}: {_e(_label(headline_metric(model)))}</h3>")
            sections.append(_table(beside.tables[model], f"reference-{model}"))
    return sections


def _final_overall(run: RunResults) -> pd.DataFrame:
    """Per model: the server's pooled estimates with their spread (``-sd``), and in a
    simulation the exact figures beside them."""
    rows = []
    for model, records in run.rounds.items():
        kinds = {"server's estimate (from noisy releases)": run.final(model)}
        if model in run.exact:
            kinds["exact (simulation only)"] = run.exact[model]
        for kind, metrics in kinds.items():
            rows.append(
                {"model": model, "round": records[-1]["round"], "figures": kind}
                | overall_metrics(metrics)
            )
    return pd.DataFrame(rows)


def _final_per_storefront(run: RunResults) -> dict[str, pd.DataFrame]:
    frames = {}
    for model in run.rounds:
        per_storefront = storefront_metrics(run.final(model))
        if per_storefront:
            frame = pd.DataFrame.from_dict(per_storefront, orient="index")
            frames[model] = frame.rename_axis("storefront").reset_index()
    return frames


def _participation_frame(run: RunResults) -> pd.DataFrame:
    """Per model and round: how many sites' updates were accepted, which were not, whose
    evaluation was suppressed (below its minimum cohort) and which sites planned the
    server's request down."""
    rows = []
    for model, records in run.rounds.items():
        for record in records:
            rejected = [
                f"{r.get('storefront')} ({r.get('reason')})" for r in record.get("rejected", [])
            ]
            rows.append(
                {
                    "model": model,
                    "round": record["round"],
                    "accepted": len(record.get("accepted", [])),
                    "rejected": "; ".join(rejected),
                    "declined": "; ".join(record.get("declined", [])),
                    "failed": "; ".join(record.get("failed", [])),
                    "kept previous model": record.get("kept-previous-model", False),
                    "evaluation suppressed": ", ".join(
                        wire.storefront_of_reason(reason) or reason
                        for reason in record.get("suppressed", [])
                    ),
                    "privacy notes": "; ".join(
                        f"{storefront}: {site[wire.PRIVACY_NOTE]}"
                        for storefront, site in record.get("privacy", {}).items()
                        if site.get(wire.PRIVACY_NOTE)
                    ),
                }
            )
    return pd.DataFrame(rows)


def _accountants(privacy: list[SitePrivacy]) -> str:
    """The accountants the ledgers name, each with its description ("none" if no DP)."""
    names = sorted({name for p in privacy for name in p.accountant.split(",") if name})
    return "; ".join(f"{name}: {create_accountant(name).description}" for name in names) or "none"


def _privacy_frame(privacy: list[SitePrivacy]) -> pd.DataFrame:
    rows = [
        {
            "model": p.model,
            "storefront": p.storefront,
            "ε (ledger)": p.epsilon,
            "accountant": p.accountant,
            "ε reported": p.reported_epsilon,
            "δ": p.delta,
            "DP steps": p.dp_steps,
            "rounds": p.rounds,
            "ε budget": p.budget_epsilon,
            "noise multiplier": p.noise_multiplier,
            "sample rate": p.sample_rate,
            "check": p.check,
            "evaluation ε (alone)": p.evaluation_epsilon,
            "releases": p.releases,
            "attacker at this ε (bundled data)": p.attack or None,
        }
        for p in privacy
    ]
    return pd.DataFrame(rows)


def _sweep_frame(sweep: Iterable[RunResults]) -> pd.DataFrame:
    rows = []
    for run in sweep:
        row: dict[str, Any] = {"run": run.run_dir.name, "ε": run.epsilon}
        for model in run.rounds:
            metric = headline_metric(model, run.final(model))
            row[f"{model} {_label(metric)}"] = run.final(model).get(metric)
        rows.append(row)
    return pd.DataFrame(rows)


def _storefront_sections(run: RunResults) -> list[str]:
    split = Path(str(run.config.get("storefronts-dir", "")))
    sections = []
    if (split / SUMMARY_FILE).is_file():
        summary = pd.read_csv(split / SUMMARY_FILE)
        sections += ["<h2>Storefronts</h2>", _table(summary, "storefronts")]
    if (split / INGEST_REPORT).is_file():
        ingest = json.loads((split / INGEST_REPORT).read_text())
        counts = {k: v for k, v in ingest.items() if not isinstance(v, dict)}
        counts = {k: ", ".join(v) if isinstance(v, list) else v for k, v in counts.items()}
        frame = pd.DataFrame({"ingest": list(counts), "value": list(counts.values())})
        sections += ["<h2>Ingest of the source data</h2>", _table(frame, "ingest")]
    return sections


def _config_frame(config: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"key": list(config), "value": [str(v) for v in config.values()]})


def _table(frame: pd.DataFrame, table_id: str) -> str:
    id_attribute = f" id='{table_id}'"
    header = "".join(f"<th>{_e(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(format_value(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table{id_attribute}><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def format_value(value: Any) -> str:
    """How a table cell shows a value: floats to 4 significant decimals, '—' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _replace(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, replacing a previous ``target`` directory."""
    previous = target.with_name(f".{target.name}-previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        os.replace(target, previous)
    os.replace(source, target)
    shutil.rmtree(previous, ignore_errors=True)
