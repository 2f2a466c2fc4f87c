"""Benchmark: wall time of a simulated federation ÷ the same local training in one process.

Run ``python -m lab.benchmarks.federation_cost``; it prints a Markdown section
for BENCHMARKS.md. Both sides train the same models with the same run config (default:
the main job's, :data:`simulations.run_configs.MAIN_RUN_CONFIG`) on the same storefront split of
the bundled data, with the same per-site seeds:

- ``federated``: :func:`simulations.runner.run_simulation_job` — the real ``flwr run``
  with a local SuperLink, one simulated SuperNode per storefront, the ServerApp with
  update screening, checkpoints, the round log and the bundle;
- ``sequential``: :func:`lab.sequential.run_sequential_federation` — the same
  site code (:func:`clients.site_task.train_round`, DP, ledgers) called site after site
  in this process, with FedAvg and the same pooled evaluation.

The ratio is federated ÷ sequential wall time (target ≤ 1.25). The two runs are timed
back to back, so load from other processes hits both; the final metrics of both are
printed too, as a check that they trained the same thing.

The per-message overhead (issue #11) is (federated wall − sequential wall) ÷ site-rounds
(storefronts × rounds × models; a site-round is one train and one evaluate message).
With ``--synthetic-storefronts N --synthetic-customers M`` the storefronts are generated
as ``fedshop-sim run --synthetic`` does (:func:`simulations.synthetic.write_synthetic_split`),
and ``--models``/``--rounds`` override the run config. Both sides record where each
message's time went at the site (:mod:`clients.site_timing`); the section shows it per
site-round.

That measure charges the fixed start and stop of ``flwr run`` (local SuperLink, Ray, the
app's install, the final delivery) to the site-rounds. ``--more-rounds R2`` runs both
sides again with R2 rounds on the same storefronts and splits the gap into its two parts
by the two runs: the *marginal* overhead per site-round,
(gap(R2) − gap(R1)) ÷ (site-rounds(R2) − site-rounds(R1)), and the fixed cost per run,
gap(R1) − marginal × site-rounds(R1).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from math import nan
from pathlib import Path
from typing import Any

from clients.site_data import storefront_slugs
from clients.site_timing import TIMINGS_ENV, read_timings
from lab.sequential import run_sequential_federation
from server.run_results import headline_metric, load_run
from simulations.progress import SILENT
from simulations.run_configs import MAIN_RUN_CONFIG
from simulations.runner import DEFAULT_CLIENT_CPUS, app_run_config, run_simulation_job
from simulations.storefronts import DEFAULT_MIN_CUSTOMERS, prepare_bundled_storefronts
from simulations.synthetic import write_synthetic_split

TARGET_RATIO = 1.25
TARGET_OVERHEAD_MS = 50.0
PHASES = (
    "load-prepared",
    "read",
    "featurise",
    "store-prepared",
    "policy",
    "plan",
    "ledger",
    "train",
    "evaluate",
    "reply",
)
"""The site phases of :mod:`clients.site_task`, in the order a train message meets them."""
SIDES = ("federated", "sequential")


def measure(
    split: Path, work: Path, run_config: dict[str, Any], client_cpus: int
) -> dict[str, Any]:
    """Run both sides once; their wall seconds, final headline metric per model and the
    site's seconds per phase (summed over all messages)."""
    federated_timings, sequential_timings = work / "timings-federated", work / "timings-sequential"
    federated_timings.mkdir()
    sequential_timings.mkdir()
    previous = os.environ.get(TIMINGS_ENV)
    try:
        # Inherited by flwr run, its SuperLink and the Ray workers of the ClientApps.
        os.environ[TIMINGS_ENV] = str(federated_timings)
        began = time.perf_counter()
        run_simulation_job(
            split,
            work / "federated",
            run_config=run_config,
            client_cpus=client_cpus,
            out=io.StringIO(),
        )
        federated_seconds = time.perf_counter() - began
        os.environ[TIMINGS_ENV] = str(sequential_timings)
        sequential = run_sequential_federation(split, work / "sequential", run_config)
    finally:
        if previous is None:
            os.environ.pop(TIMINGS_ENV, None)
        else:
            os.environ[TIMINGS_ENV] = previous
    federated = load_run(work / "federated")
    return {
        "federated-seconds": federated_seconds,
        "sequential-seconds": sequential.seconds,
        # NaN: every site's evaluation was below its minimum cohort (small storefronts)
        "federated": {
            m: federated.scored(m).get(headline_metric(m), nan) for m in federated.rounds
        },
        "sequential": {
            m: exact.get(headline_metric(m), nan) for m, exact in sequential.exact.items()
        },
        "federated-phases": phase_seconds(federated_timings),
        "sequential-phases": phase_seconds(sequential_timings),
    }


def phase_seconds(directory: Path) -> dict[str, float]:
    """Seconds per site phase over all messages, plus ``messages`` (their count) and
    ``site`` (their whole answers: the phases and the rest of the site code)."""
    totals: dict[str, float] = defaultdict(float)
    for record in read_timings(directory):
        totals["messages"] += 1
        totals["site"] += float(record["seconds"])
        for name in PHASES:
            totals[name] += float(record.get(name, 0.0))
    return dict(totals)


def site_rounds(split: Path, run_config: dict[str, Any]) -> int:
    """Storefronts × rounds × models of the run."""
    config = {**app_run_config(), **run_config}
    models = [m for m in str(config["models"]).split(",") if m.strip()]
    return len(storefront_slugs(split)) * int(config["num-server-rounds"]) * len(models)


def print_overhead(result: dict[str, Any], rounds_of_sites: int) -> None:
    """The per-message overhead and the per-site-round breakdown of both sides (ms)."""
    gap = result["federated-seconds"] - result["sequential-seconds"]
    overhead_ms = 1000 * gap / rounds_of_sites
    verdict = "met" if overhead_ms <= TARGET_OVERHEAD_MS else "NOT met"
    print(
        f"\nOverhead per site-round: (federated − sequential) ÷ {rounds_of_sites} site-rounds = "
        f"**{overhead_ms:.0f} ms** (target ≤ {TARGET_OVERHEAD_MS:.0f} ms: {verdict}).\n"
    )
    print("Where a site-round goes, ms per site-round (site code summed over its messages):\n")
    print("| side | wall | site code | " + " | ".join(PHASES) + " |")
    print("|---|---:|---:|" + "---:|" * len(PHASES))
    for side in SIDES:
        phases = result[f"{side}-phases"]
        cells = [
            1000 * result[f"{side}-seconds"] / rounds_of_sites,
            1000 * phases.get("site", 0.0) / rounds_of_sites,
            *(1000 * phases.get(name, 0.0) / rounds_of_sites for name in PHASES),
        ]
        print(f"| {side} | " + " | ".join(f"{cell:.1f}" for cell in cells) + " |")
    print(
        "\nThe federated side runs two ClientApps at once (one CPU each), so its site code can "
        "add up to more than its wall; wall − site code is transport, the ClientApp runtime "
        "and the ServerApp."
    )


def print_marginal_overhead(
    first: dict[str, Any], first_site_rounds: int, second: dict[str, Any], second_site_rounds: int
) -> None:
    """The gap split into a fixed cost per run and a marginal overhead per site-round
    (module docstring), from runs with two round counts."""
    gaps = [run["federated-seconds"] - run["sequential-seconds"] for run in (first, second)]
    marginal = (gaps[1] - gaps[0]) / (second_site_rounds - first_site_rounds)
    fixed = gaps[0] - marginal * first_site_rounds
    verdict = "met" if 1000 * marginal <= TARGET_OVERHEAD_MS else "NOT met"
    print(
        f"\nSplit by the two runs ({first_site_rounds} and {second_site_rounds} site-rounds; "
        f"gaps {gaps[0]:.1f} s and {gaps[1]:.1f} s): fixed cost per run **{fixed:.1f} s**, "
        f"marginal overhead per site-round **{1000 * marginal:.0f} ms** "
        f"(target ≤ {TARGET_OVERHEAD_MS:.0f} ms: {verdict}).\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--client-cpus",
        type=int,
        default=DEFAULT_CLIENT_CPUS,
        help="CPUs per simulated ClientApp (Ray)",
    )
    parser.add_argument("--synthetic-storefronts", type=int, help="generate N storefronts")
    parser.add_argument(
        "--synthetic-customers", type=int, default=300, help="customers per storefront"
    )
    parser.add_argument("--synthetic-items", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", help="comma-separated models (default: the main job's)")
    parser.add_argument("--rounds", type=int, help="server rounds (default: the main job's)")
    parser.add_argument(
        "--more-rounds",
        type=int,
        help="also run with this many rounds, to split the gap into a fixed cost per run "
        "and a marginal overhead per site-round",
    )
    args = parser.parse_args(argv)
    logging.getLogger("flwr").propagate = False
    run_config = dict(MAIN_RUN_CONFIG)
    if args.models:
        run_config["models"] = args.models
    if args.rounds:
        run_config["num-server-rounds"] = args.rounds
    with tempfile.TemporaryDirectory(prefix="federation-cost-") as temporary:
        work = Path(temporary)
        split = work / "storefronts"
        if args.synthetic_storefronts:
            write_synthetic_split(
                split,
                storefronts=args.synthetic_storefronts,
                # fedshop-sim's --synthetic-customers counts all storefronts' customers
                customers=args.synthetic_storefronts * args.synthetic_customers,
                items=args.synthetic_items,
                order_lines=None,
                seed=args.seed,
                progress=SILENT,
            )
        else:
            prepare_bundled_storefronts(split, min_customers=DEFAULT_MIN_CUSTOMERS)
        rounds_of_sites = site_rounds(split, run_config)
        result = measure(split, work, run_config, args.client_cpus)
        if args.more_rounds:
            longer = {**run_config, "num-server-rounds": args.more_rounds}
            longer_site_rounds = site_rounds(split, longer)  # before the split is removed
            (work / "longer").mkdir()
            longer_result = measure(split, work / "longer", longer, args.client_cpus)
    ratio = result["federated-seconds"] / result["sequential-seconds"]
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m lab.benchmarks.federation_cost", *given])
    print("## Federation cost (simulated federation ÷ sequential local training)\n")
    print(
        f"Command: `{command.strip()}`; {args.client_cpus} CPU(s) per simulated ClientApp; "
        "run config: the main job's "
        f"({', '.join(f'{k}={v}' for k, v in run_config.items())}); "
        f"{'synthetic' if args.synthetic_storefronts else 'bundled'} storefronts; "
        "both runs back to back on the same machine.\n"
    )
    headers = [f"{m} {headline_metric(m)}" for m in result["sequential"]]
    print("| run | wall s | " + " | ".join(headers) + " |")
    print("|---|---:|" + "---:|" * len(result["sequential"]))
    for side in SIDES:
        values = " | ".join(f"{result[side][m]:.3f}" for m in result["sequential"])
        print(f"| {side} | {result[f'{side}-seconds']:.1f} | {values} |")
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"\nFederated ÷ sequential: **{ratio:.2f}×** (target ≤ {TARGET_RATIO}: {verdict}).")
    print_overhead(result, rounds_of_sites)
    if args.more_rounds:
        federated, sequential = (longer_result[f"{side}-seconds"] for side in SIDES)
        print(
            f"\nWith {args.more_rounds} rounds: federated {federated:.1f} s, "
            f"sequential {sequential:.1f} s."
        )
        print_overhead(longer_result, longer_site_rounds)
        print_marginal_overhead(result, rounds_of_sites, longer_result, longer_site_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
