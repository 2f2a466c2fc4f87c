"""Benchmark: wall time of a simulated federation ÷ the same local training in one process.

Run ``python -m simulations.benchmarks.federation_cost``; it prints a Markdown section
for BENCHMARKS.md. Both sides train the same models with the same run config (default:
the main job's, :data:`simulations.run_configs.MAIN_RUN_CONFIG`) on the same storefront split of
the bundled data, with the same per-site seeds:

- ``federated``: :func:`simulations.runner.run_simulation_job` — the real ``flwr run``
  with a local SuperLink, one simulated SuperNode per storefront, the ServerApp with
  update screening, checkpoints, the round log and the bundle;
- ``sequential``: :func:`simulations.sequential.run_sequential_federation` — the same
  site code (:func:`clients.site_task.train_round`, DP, ledgers) called site after site
  in this process, with FedAvg and the same pooled evaluation.

The ratio is federated ÷ sequential wall time (target ≤ 1.25). The two runs are timed
back to back, so load from other processes hits both; the final metrics of both are
printed too, as a check that they trained the same thing.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from server.run_results import headline_metric, load_run
from simulations.run_configs import MAIN_RUN_CONFIG
from simulations.runner import DEFAULT_CLIENT_CPUS, run_simulation_job
from simulations.sequential import run_sequential_federation
from simulations.storefronts import DEFAULT_MIN_CUSTOMERS, prepare_bundled_storefronts

TARGET_RATIO = 1.25


def measure(
    split: Path, work: Path, run_config: dict[str, Any], client_cpus: int
) -> dict[str, Any]:
    """Run both sides once; their wall seconds and final headline metric per model."""
    began = time.perf_counter()
    run_simulation_job(
        split,
        work / "federated",
        run_config=run_config,
        client_cpus=client_cpus,
        out=io.StringIO(),
    )
    federated_seconds = time.perf_counter() - began
    federated = load_run(work / "federated")
    sequential = run_sequential_federation(split, work / "sequential", run_config)
    return {
        "federated-seconds": federated_seconds,
        "sequential-seconds": sequential.seconds,
        "federated": {m: federated.final(m)[headline_metric(m)] for m in federated.rounds},
        "sequential": {m: rows[-1][headline_metric(m)] for m, rows in sequential.metrics.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--client-cpus",
        type=int,
        default=DEFAULT_CLIENT_CPUS,
        help="CPUs per simulated ClientApp (Ray)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("flwr").propagate = False
    run_config = dict(MAIN_RUN_CONFIG)
    with tempfile.TemporaryDirectory(prefix="federation-cost-") as temporary:
        work = Path(temporary)
        split = work / "storefronts"
        prepare_bundled_storefronts(split, min_customers=DEFAULT_MIN_CUSTOMERS)
        result = measure(split, work, run_config, args.client_cpus)
    ratio = result["federated-seconds"] / result["sequential-seconds"]
    command = " ".join(["python -m simulations.benchmarks.federation_cost", *(argv or [])])
    print("## Federation cost (simulated federation ÷ sequential local training)\n")
    print(
        f"Command: `{command.strip()}`; {args.client_cpus} CPU(s) per simulated ClientApp; "
        "run config: the main job's "
        f"({', '.join(f'{k}={v}' for k, v in run_config.items())}); bundled storefronts; "
        "both runs back to back on the same machine.\n"
    )
    headers = [f"{m} {headline_metric(m)}" for m in result["sequential"]]
    print("| run | wall s | " + " | ".join(headers) + " |")
    print("|---|---:|" + "---:|" * len(result["sequential"]))
    for side in ("federated", "sequential"):
        values = " | ".join(f"{result[side][m]:.3f}" for m in result["sequential"])
        print(f"| {side} | {result[f'{side}-seconds']:.1f} | {values} |")
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"\nFederated ÷ sequential: **{ratio:.2f}×** (target ≤ {TARGET_RATIO}: {verdict}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
