"""The simulation jobs behind ``fedshop-sim main`` and ``fedshop-sim run``: stages run in order
on one :class:`MainRun`.

``main`` runs ``MAIN_STAGES``: the bundled data's storefront split, then the stages of
``SIMULATION_STAGES`` (federated DP training through ``flwr run``, the privacy report,
``report.html``), which ``run`` also uses on any split. Both train with the federated
settings of the nearest ε (:func:`with_settings_per_epsilon`), ``main`` over its models, ε
and rounds (:data:`simulations.run_configs.MAIN_RUN_CONFIG`). This module imports the training
stack (torch, Flower, matplotlib); :mod:`simulations.cli` imports it only when one of
these commands runs, so the light commands start fast.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from models.metrics import OUTSIDE_UK, OVERALL
from models.settings_per_epsilon import federated_run_config, settings_epsilon
from server.bundle import BUNDLE_DIR
from server.checkpoint import CHECKPOINT_DIR
from server.evaluation import SPREAD_SUFFIX
from server.privacy_report import PRIVACY_REPORT
from server.report import PLOTS_DIR, REPORT_FILE, format_value, write_report
from server.run_files import DELIVERY_LOG, RESOLVED_CONFIG, ROUNDS_LOG
from server.run_results import headline_metric, load_run, overall_metrics, spread
from simulations.assignments import parse_assignments
from simulations.errors import PROG, CommandError
from simulations.privacy_report import SITES_DIR, write_ledger_privacy_report
from simulations.progress import Progress
from simulations.reference_runs import beside_comparison
from simulations.run_configs import MAIN_RUN_CONFIG
from simulations.runner import (
    DEFAULT_CLIENT_CPUS,
    FLWR_HOME_DIR,
    RUN_LOG,
    app_run_config,
    ray_cluster_address,
    run_simulation_job,
)
from simulations.storefronts import format_summary, prepare_bundled_storefronts
from simulations.synthetic import write_synthetic_split

STOREFRONTS_DIR = "storefronts"
"""Subdirectory of a main run that holds its storefront split."""


@dataclass
class MainRun:
    """State of one ``fedshop-sim main`` (or ``run``) job, passed from stage to stage."""

    out_dir: Path
    min_customers: int
    progress: Progress
    run_config: dict[str, Any] = field(default_factory=lambda: dict(MAIN_RUN_CONFIG))
    """Overrides of the app's ``[tool.flwr.app.config]`` for the federated run."""
    client_cpus: int = DEFAULT_CLIENT_CPUS
    ray_address: str | None = None
    """``HOST:PORT`` of a running Ray cluster to run the ClientApps on; None: a Ray of the
    run's own."""
    verbose: bool = False
    """Show Flower's whole log live instead of one line per round."""
    site_policy: list[str] = field(default_factory=list)
    """``KEY=VALUE`` settings of every simulated site's privacy policy."""
    resume: bool = False
    sweep_dir: Path | None = None
    reference: Path | None = None
    """A ``comparison.json`` shown beside the run's results in the report."""
    storefronts_dir: Path | None = None
    storefront_summary: pd.DataFrame | None = None
    outputs: list[Path] = field(default_factory=list)


def prepare_storefronts_stage(run: MainRun) -> None:
    """Stage 1: the bundled data split into storefronts under ``<out>/storefronts``."""
    split_dir = run.out_dir / STOREFRONTS_DIR
    run.storefront_summary = prepare_bundled_storefronts(
        split_dir, min_customers=run.min_customers, progress=run.progress
    )
    run.storefronts_dir = split_dir
    run.outputs.append(split_dir)
    print(f"Storefronts of the bundled data (at least {run.min_customers} customers each):")
    print(format_summary(run.storefront_summary))


def federated_training_stage(run: MainRun) -> None:
    """Federated DP training of the models on the split, through ``flwr run``."""
    if run.storefronts_dir is None:
        raise CommandError("no storefront split to train on")
    config = run.run_config
    description = (
        f"federated training of {config.get('models', 'the default models')} "
        f"(epsilon {config.get('epsilon', 'default')}, "
        f"{config.get('num-server-rounds', 'default')} rounds) with flwr run"
    )
    with run.progress.step(description):
        run_simulation_job(
            run.storefronts_dir,
            run.out_dir,
            run_config=config,
            client_cpus=run.client_cpus,
            ray_address=run.ray_address,
            resume=run.resume,
            verbose=run.verbose,
            site_policy=run.site_policy,
        )
    run.outputs += [
        run.out_dir / name for name in (RESOLVED_CONFIG, ROUNDS_LOG, BUNDLE_DIR, DELIVERY_LOG)
    ]


def privacy_report_stage(run: MainRun) -> None:
    """ε, δ and steps per site and model, recomputed from the ledgers and checked."""
    with run.progress.step("privacy report (epsilon recomputed from the sites' ledgers)"):
        path = write_ledger_privacy_report(run.out_dir)
    run.outputs.append(path)
    print(f"Privacy spent per site and model (recomputed from the ledgers; every site in {path}):")
    for line in privacy_summary(json.loads(path.read_text())["sites"]):
        print(f"  {line}")


def privacy_summary(sites: list[dict[str, Any]]) -> list[str]:
    """One line per model: the range of ε over its sites, δ, accountant and the checks."""
    lines = []
    for model, rows in pd.DataFrame(sites).groupby("model", sort=False):
        trained = rows[rows["dp_steps"] > 0]
        if trained.empty:
            lines.append(f"{model}: no DP step at any site")
            continue
        checks = ", ".join(f"{n} {check}" for check, n in rows["check"].value_counts().items())
        lines.append(
            f"{model}: ε {trained['epsilon'].min():.3f}–{trained['epsilon'].max():.3f} at "
            f"δ ≤ {trained['delta'].max():.2g} over {len(trained)} of {len(rows)} sites "
            f"({', '.join(sorted(set(trained['accountant'])))}); ledger vs report: {checks}"
        )
    return lines


def report_stage(run: MainRun) -> None:
    """``report.html`` with its plots."""
    results = load_run(run.out_dir)
    beside = None if run.reference is None else beside_comparison(results, run.reference)
    with run.progress.step("report.html and plots"):
        path = write_report(run.out_dir, sweep_dir=run.sweep_dir, beside=beside)
    run.outputs.append(path)
    print(
        "Final metrics over all storefronts' held-out customers: the server's estimate from "
        "the sites' noisy releases ± its spread, and the exact figure this simulation can "
        "compute:"
    )
    for model in results.rounds:
        estimates, exact = results.final(model), results.exact.get(model, {})
        shown = [
            f"{name} {format_value(value)} ± {format_value(spread(estimates, name))} "
            f"(exact {format_value(exact.get(name))})"
            for name, value in overall_metrics(estimates).items()
            if not name.endswith(SPREAD_SUFFIX) and name != "num-customers"
        ]
        print(f"  {model}: " + ", ".join(shown))
    if beside is not None:
        print(f"Beside the reference runs of {run.reference.name} (all runs in report.html):")
        for model, frame in beside.tables.items():
            shown = frame[frame["group"].isin([OVERALL, OUTSIDE_UK])].set_index("group").T
            shown = shown.loc[[_key_reference(name, results.epsilon) for name in shown.index]]
            print(f"  {model} {headline_metric(model)}:")
            print(shown.to_string(float_format=lambda value: f"{value:.3f}", na_rep="—"))


def _key_reference(column: str, epsilon: float) -> bool:
    """Whether a reference column is shown on the console: this run, the non-private
    runs, the DP runs at this run's ε, storefront-alone and the strongest baselines."""
    if column.startswith(("this run", "storefront-alone")) or column in (
        "centralized",
        "federated",
    ):
        return True
    if column.endswith(f"-dp-eps-{epsilon:g}"):
        return True
    return column in ("baseline: own history", "baseline: logistic regression (log1p)")


def training_outcome_stage(run: MainRun) -> None:
    """Fail the job if a model never took an update: the report is written, but a run in
    which every site failed in every round did not train that model."""
    results = load_run(run.out_dir)
    for model, records in results.rounds.items():
        if not any(record.get("accepted") for record in records):
            failures = sorted({f for record in records for f in record.get("failed", [])})
            raise CommandError(
                f"{model}: no site update was accepted in any of {len(records)} rounds "
                f"(failed: {'; '.join(failures) or 'none'}); see {run.out_dir / RUN_LOG}"
            )


SIMULATION_STAGES: list[Callable[[MainRun], None]] = [
    federated_training_stage,
    privacy_report_stage,
    report_stage,
    training_outcome_stage,
]
"""What ``run`` (and ``main``, after the split) does with a storefront split."""

MAIN_STAGES: list[Callable[[MainRun], None]] = [prepare_storefronts_stage, *SIMULATION_STAGES]
"""The stages of ``fedshop-sim main``, run in order."""


def run_run(args: argparse.Namespace) -> int:
    """Prepare or take a split, train on it federatedly, write the privacy report and
    ``report.html``."""
    ray_address = ray_cluster_address(args.ray_address)  # before any work: a bad one stops
    run = MainRun(
        out_dir=args.out,
        min_customers=args.min_customers,
        progress=Progress(PROG),
        run_config=with_settings_per_epsilon(training_config(args, {})),
        client_cpus=args.client_cpus,
        ray_address=ray_address,
        verbose=args.verbose,
        site_policy=args.site_policy,
        resume=args.resume,
        sweep_dir=args.sweep_dir,
        reference=args.reference,
    )
    split_dir = args.out / STOREFRONTS_DIR
    if args.storefronts is not None:
        run.storefronts_dir = args.storefronts
    elif args.resume and split_dir.is_dir():
        run.storefronts_dir = split_dir  # the split the run started with
    elif args.bundled:
        prepare_storefronts_stage(run)
    else:
        summary = write_synthetic_split(
            split_dir,
            storefronts=args.synthetic_storefronts,
            customers=args.synthetic_customers,
            items=args.synthetic_items,
            order_lines=args.synthetic_order_lines,
            largest=args.synthetic_largest_share,
            seed=args.seed,
            progress=run.progress,
        )
        run.storefronts_dir = split_dir
        run.outputs.append(split_dir)
        print(format_summary(summary))
    for stage in SIMULATION_STAGES:
        stage(run)
    print(outputs_line(run))
    return 0


def with_settings_per_epsilon(
    config: dict[str, Any], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``config`` (what the command line sets) over the federated settings of the nearest
    ε for its models (:func:`models.settings_per_epsilon.federated_run_config`; without
    DP, ε ≤ 0, the non-private ones), over ``base``; ε and models from ``config``, else
    ``base``, else the app's defaults."""
    app = app_run_config()
    merged = {**(base or {}), **config}
    epsilon = settings_epsilon(merged.get("epsilon", app["epsilon"]))
    models = [name.strip() for name in str(merged.get("models", app["models"])).split(",")]
    try:
        return {**(base or {}), **federated_run_config(models, epsilon), **config}
    except ValueError as error:
        raise CommandError(str(error)) from None


def run_main(args: argparse.Namespace) -> int:
    """Run every stage of ``MAIN_STAGES`` on the bundled data."""
    ray_address = ray_cluster_address(args.ray_address)  # before any work: a bad one stops
    run = MainRun(
        out_dir=args.out,
        min_customers=args.min_customers,
        progress=Progress(PROG),
        run_config=with_settings_per_epsilon(training_config(args, {}), MAIN_RUN_CONFIG),
        client_cpus=args.client_cpus,
        ray_address=ray_address,
        verbose=args.verbose,
        site_policy=args.site_policy,
        sweep_dir=args.sweep_dir,
        reference=args.reference,
    )
    clear_previous_run(run.out_dir)
    for stage in MAIN_STAGES:
        stage(run)
    print(outputs_line(run))
    return 0


def outputs_line(run: MainRun) -> str:
    """``Outputs in <out>: name, name, ...`` (paths outside the run directory in full)."""
    names = [
        str(path.relative_to(run.out_dir)) if path.is_relative_to(run.out_dir) else str(path)
        for path in run.outputs
    ]
    return f"Outputs in {run.out_dir}: {', '.join(names)}"


def clear_previous_run(run_dir: Path) -> None:
    """Remove what an earlier simulation job left in ``run_dir`` (the split is replaced by
    its own stage), so that ``main`` always starts a fresh run with fresh site budgets."""
    for name in PREVIOUS_RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


PREVIOUS_RUN_OUTPUTS = (
    RESOLVED_CONFIG,
    ROUNDS_LOG,
    CHECKPOINT_DIR,
    BUNDLE_DIR,
    SITES_DIR,
    FLWR_HOME_DIR,
    RUN_LOG,
    PRIVACY_REPORT,
    REPORT_FILE,
    PLOTS_DIR,
)
"""Everything a simulation job writes into its run directory besides the split."""


def training_config(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with the training options given on the command line."""
    config = dict(defaults)
    for option, key in (
        ("models", "models"),
        ("rounds", "num-server-rounds"),
        ("epsilon", "epsilon"),
    ):
        if getattr(args, option) is not None:
            config[key] = getattr(args, option)
    try:
        config.update(parse_assignments(args.set))
    except ValueError as error:
        raise CommandError(str(error)) from None
    return config
