"""Benchmark: how fast the synthetic generator makes order lines, and how it scales.

Run ``python -m lab.benchmarks.synthetic``; it prints a Markdown section for
BENCHMARKS.md. Sizes keep the bundled data's shape (~90 order lines per customer,
catalogue ~4,000 items); the target is 1,000,000 order lines in under 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

from simulations.synthetic import DEFAULT_LINES_PER_CUSTOMER, generate_orders

TARGET_SECONDS_PER_MILLION = 30.0


def time_generation(n_order_lines: int, repeats: int) -> float:
    """Median wall seconds of ``repeats`` generations of ``n_order_lines`` lines."""
    seconds = []
    for seed in range(repeats):
        began = time.perf_counter()
        frame = generate_orders(
            n_storefronts=40,
            n_customers=n_order_lines // DEFAULT_LINES_PER_CUSTOMER,
            n_items=4000,
            n_order_lines=n_order_lines,
            seed=seed,
        )
        seconds.append(time.perf_counter() - began)
        assert len(frame) == n_order_lines
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    """Time the generator at several sizes and print the Markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    rows = [(size, time_generation(size, args.repeats)) for size in args.sizes]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    smallest_size, smallest_seconds = rows[0]
    command = "python -m lab.benchmarks.synthetic " + " ".join(argv or sys.argv[1:])
    print("## Synthetic data generation\n")
    print(f"Command: `{command.strip()}` (median of {args.repeats} seeds per size)\n")
    print("| order lines | customers | seconds | lines per second | time ÷ smallest |")
    print("|---:|---:|---:|---:|---:|")
    for size, seconds in rows:
        print(
            f"| {size:,} | {size // DEFAULT_LINES_PER_CUSTOMER:,} | {seconds:.2f} |"
            f" {size / seconds:,.0f} | {seconds / smallest_seconds:.1f}"
            f" (size × {size / smallest_size:g}) |"
        )
    print(f"\nPeak resident memory of the process: {peak_mib:,.0f} MiB.")
    per_million = {size: seconds * 1e6 / size for size, seconds in rows}
    worst = max(per_million.values())
    verdict = "met" if worst < TARGET_SECONDS_PER_MILLION else "NOT met"
    print(
        f"Target {TARGET_SECONDS_PER_MILLION:.0f} s per million lines: {verdict}"
        f" (worst {worst:.2f} s per million)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
