"""Benchmark: how close the server's noisy evaluation estimates are to the exact figures.

Run ``python -m lab.benchmarks.noisy_evaluation --run runs/main`` after the main
job; it prints a Markdown section for BENCHMARKS.md (progress on stderr).

Every site answers an evaluation through the release mechanism (:mod:`privacy.release`):
its held-out cohort's size, released once per run with the policy's cohort noise (and
compared with its minimum cohort), and the model's queries with the noise its evaluation
ε buys. This benchmark takes the run's final models and storefront split, computes every
site's per-customer values once, and then draws the sites' releases ``--releases`` times
with the real mechanism (OpenDP's discrete Gaussian, the sites' own policies as written
in the run's ledgers, one evaluation planned per run) for each evaluation ε given, as a
site grants it (:func:`privacy.planning.evaluation_budget` of the run's ε). Each draw is
pooled as the server pools it (:func:`server.evaluation.estimates`), with its stated
spread. The table gives, per model and metric: the exact figure over all held-out
customers (by the model's protocol; the sites suppressed in a release are in it, not in
that release's estimate), the estimates' mean and standard deviation, the mean stated
spread, and how often the estimate lies within two stated spreads of the exact figure;
then per storefront, the same for the headline metric, and how often its release is
suppressed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clients.site_data import SIMULATED_SITES, storefront_slugs
from clients.site_releases import COHORT, COHORT_QUERY, evaluation_noise
from common import wire
from models import schema
from models.registry import FederatedModel, get_model
from privacy import release
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from privacy.planning import accounting_delta, evaluation_budget
from privacy.policy import SitePolicy
from server.bundle import BUNDLE_DIR, load_bundle
from server.evaluation import SPREAD_SUFFIX, estimates
from server.run_files import RESOLVED_CONFIG

DEFAULT_RELEASES = 200


@dataclass(frozen=True)
class Site:
    """One storefront's held-out customers for a model, their values, and its policy."""

    storefront: str
    evaluation: Any
    values: dict[str, np.ndarray]
    held_out: int
    policy: SitePolicy
    delta: float


def sites_of(
    run_dir: Path, model: FederatedModel, module: torch.nn.Module, facts: dict
) -> list[Site]:
    """Every storefront of the run's split with its held-out values for ``model``."""
    split = Path(json.loads((run_dir / RESOLVED_CONFIG).read_text())["storefronts-dir"])
    sites = []
    for slug in storefront_slugs(split):
        orders = pd.read_parquet(split / slug / schema.ORDERS_FILE)
        evaluation = model.site_data(orders, facts).evaluation
        with PrivacyLedger(run_dir / SIMULATED_SITES / slug / LEDGER_FILE) as ledger:
            policy = ledger.policy() or SitePolicy()
            delta = accounting_delta(policy, ledger.entries(model.name))
        with torch.no_grad():
            values = model.evaluation_values(module, evaluation)
        name = str(orders[schema.STOREFRONT].iloc[0])
        held_out = model.held_out_size(evaluation)
        sites.append(Site(name, evaluation, values, held_out, policy, delta))
    return sites


def draw(
    model: FederatedModel, sites: Sequence[Site], run_epsilon: float, rng: np.random.Generator
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One evaluation of the run by every site, pooled: (overall estimates, per storefront)."""
    answers, per_storefront = [], {}
    for site in sites:
        held_out_cell = {COHORT: np.ones(site.held_out)}  # cell 1 of the cohort release
        held_out = release.release([COHORT_QUERY], held_out_cell, site.policy.cohort_noise, rng)[
            COHORT
        ][1]
        if held_out < site.policy.min_cohort:
            continue
        budget = evaluation_budget(site.policy, run_epsilon)
        noise = evaluation_noise(model, budget, 1, site.delta, site.policy.accountant)
        answer = {
            **release.release(model.evaluation_queries, site.values, noise, rng),
            wire.NUM_EXAMPLES: held_out,
            wire.NOISE_SD: noise,
            wire.NUM_EXAMPLES_NOISE_SD: site.policy.cohort_noise,
        }
        answers.append(answer)
        per_storefront[site.storefront] = estimates(model, [answer])
    return (estimates(model, answers) if answers else {}), per_storefront


def exact_figures(
    model: FederatedModel, module: torch.nn.Module, sites: Sequence[Site]
) -> tuple[dict, dict]:
    """The exact metrics over all held-out customers, and per storefront (the model's own
    protocol: churn's ROC-AUC from the exact probabilities, not the release's cells)."""
    with torch.no_grad():
        overall = model.held_out_metrics(module, [s.evaluation for s in sites])
        per_storefront = {
            s.storefront: model.held_out_metrics(module, [s.evaluation]) for s in sites
        }
    return overall, per_storefront


def section(run_dir: Path, releases: int, run_epsilons: Sequence[float], seed: int) -> str:
    """The Markdown section (module docstring)."""
    manifest, weights = load_bundle(run_dir / BUNDLE_DIR)
    lines = [
        "## Noisy evaluation against exact (issue #19)",
        "",
        f"Command: `python -m lab.benchmarks.noisy_evaluation --run {run_dir} "
        f"--releases {releases} --run-epsilons {' '.join(f'{e:g}' for e in run_epsilons)}`",
        "",
        f"The final models of `{run_dir}` scored on every storefront's held-out customers: "
        "exactly, and as the server estimates them from the sites' releases "
        f"({releases} independent releases per row, OpenDP's noise; the sites' own policies; "
        "one evaluation planned per run, so each gets its run's whole evaluation ε). "
        "*within 2 sd*: share of releases whose estimate lies within two of its stated "
        "spreads of the exact figure.",
        "",
        "| model | metric | run ε (evaluation ε) | exact | estimate mean | estimate sd "
        "| stated sd | within 2 sd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    storefront_lines = []
    rng = np.random.default_rng(seed)
    for name, entry in manifest[wire.MANIFEST_MODELS].items():
        model = get_model(name)
        facts = model.facts_from_artefacts(entry[wire.ARTEFACTS])
        module = model.build(facts)
        module.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in weights[name].items()}
        )
        module.eval()
        sites = sites_of(run_dir, model, module, facts)
        exact, exact_by_storefront = exact_figures(model, module, sites)
        metrics = [m for m in exact if m != "num-customers"]
        for run_epsilon in run_epsilons:
            print(f"{name} at run ε {run_epsilon:g}: {releases} releases", file=sys.stderr)
            draws = [draw(model, sites, run_epsilon, rng) for _ in range(releases)]
            budget = evaluation_budget(sites[0].policy, run_epsilon)
            for metric in metrics:
                lines.append(
                    _row(name, metric, run_epsilon, budget, exact[metric], [d[0] for d in draws])
                )
            storefront_lines += _storefront_rows(
                model, run_epsilon, budget, exact_by_storefront, [d[1] for d in draws]
            )
    lines += [
        "",
        "Per storefront (headline metric): *suppressed* is the share of releases in which the "
        "site's noisy held-out count fell below its minimum cohort (nothing sent).",
        "",
        "| model | storefront | run ε (evaluation ε) | held-out | exact | estimate mean "
        "| estimate sd | suppressed |",
        "|---|---|---|---|---|---|---|---|",
        *storefront_lines,
    ]
    return "\n".join(lines) + "\n"


def _row(
    model: str, metric: str, run_epsilon: float, budget: float, exact: float, draws: list[dict]
) -> str:
    values = np.array([d.get(metric, math.nan) for d in draws], dtype=float)
    spreads = np.array([d.get(f"{metric}{SPREAD_SUFFIX}", math.nan) for d in draws], dtype=float)
    within = np.abs(values - exact) <= 2 * spreads
    return (
        f"| {model} | {metric} | {run_epsilon:g} ({budget:g}) | {exact:.4f} | "
        f"{np.nanmean(values):.4f} | {np.nanstd(values):.4f} | {np.nanmean(spreads):.4f} | "
        f"{np.mean(within):.0%} |"
    )


def _storefront_rows(
    model: FederatedModel,
    run_epsilon: float,
    budget: float,
    exact: dict[str, dict],
    draws: list[dict[str, dict]],
) -> list[str]:
    metric = model.headline_metric
    rows = []
    for storefront, figures in sorted(exact.items(), key=lambda item: -item[1]["num-customers"]):
        values = np.array([d[storefront][metric] for d in draws if storefront in d], dtype=float)
        suppressed = 1 - len(values) / len(draws)
        shown = f"{np.nanmean(values):.4f} | {np.nanstd(values):.4f}" if len(values) else "— | —"
        rows.append(
            f"| {model.name} | {storefront} | {run_epsilon:g} ({budget:g}) | "
            f"{figures['num-customers']} | {figures[metric]:.4f} | {shown} | {suppressed:.0%} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the section for ``--run``."""
    parser = argparse.ArgumentParser(prog="python -m lab.benchmarks.noisy_evaluation")
    parser.add_argument("--run", type=Path, default=Path("runs/main"), help="a finished run")
    parser.add_argument("--releases", type=int, default=DEFAULT_RELEASES)
    parser.add_argument(
        "--run-epsilons", type=float, nargs="+", default=[8.0], help="the ε a run asks per model"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the stochastic rounding")
    args = parser.parse_args(argv)
    print(section(args.run, args.releases, args.run_epsilons, args.seed), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
