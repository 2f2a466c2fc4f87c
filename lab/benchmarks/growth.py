"""Benchmark: wall per round and peak memory of a synthetic federation as it grows.

Run ``python -m lab.benchmarks.growth --cell 100x100000 --cell 1000x1000000 ...``;
each cell is one ``fedshop-sim run --synthetic`` (storefronts × customers, ``--lines`` order
lines per customer, both models, one round, ``fraction-train``/``fraction-evaluate`` as
given) run as a subprocess. While it runs, every second, the resident memory of all the
run's processes is summed: the ``fedshop-sim`` process and its descendants (``flwr run``,
the local SuperLink, SuperExec, ``flwr-simulation``, the Ray workers) and every process
whose environment names the run's ``FLWR_HOME`` (Ray daemons re-parented to init). Summed
RSS counts pages shared between processes once per process (the target's measure); the
proportional set size (PSS, from ``/proc/<pid>/smaps_rollup``) counts them once.

Each cell appends one JSON line to ``--results`` (so cells can be run in separate
invocations, and a cell run again replaces its earlier line in the table); the command
then prints the Markdown table of every cell in that file and draws ``--plot``: wall per
round and peak summed RSS against customers, one line per number of storefronts.

Two probes time one piece in this process, on a split a cell wrote: ``--facts SPLIT``, the
ServerApp's shared facts of both models (before round 1), and ``--site SPLIT STOREFRONT
MODEL``, one site's answer to a train message without Flower: read, featurise, DP-SGD
with the model's default settings (σ = 1), evaluate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from server.run_files import ROUNDS_LOG
from simulations.jobs import STOREFRONTS_DIR
from simulations.local_superlink import PROC, processes_of_home
from simulations.runner import FLWR_HOME_DIR
from simulations.storefronts import INDEX_FILE
from simulations.synthetic import ZIPF

MIB = 1024 * 1024
TARGET_ROUND_SECONDS = 15 * 60.0
TARGET_PEAK_BYTES = 8 * 1024 * MIB
"""the scale target (README, "Status"): one round of both models ≤ 15 min, ≤ 8 GiB summed."""

SAMPLE_SECONDS = 1.0
_ROUND_LINE = re.compile(r"\] (\w+) round (\d+)/\d+: .* · ([\d.]+) s$")
_STEP_DONE = re.compile(r"\] (.+): done in ([\d.]+) s$")


@dataclass(frozen=True)
class Cell:
    """One configuration of the growth table."""

    storefronts: int
    customers: int

    @classmethod
    def parse(cls, text: str) -> Cell:
        """``STOREFRONTSxCUSTOMERS``, e.g. ``1000x1000000``."""
        storefronts, separator, customers = text.lower().partition("x")
        if not separator or not storefronts.isdigit() or not customers.isdigit():
            raise argparse.ArgumentTypeError(f"a cell is STOREFRONTSxCUSTOMERS, got {text!r}")
        return cls(int(storefronts), int(customers))


@dataclass
class MemoryPeak:
    """The largest summed memory of a process set seen while sampling."""

    rss: int = 0
    pss: int = 0
    processes: int = 0
    top: list[tuple[str, int]] = field(default_factory=list)
    """At the RSS peak: the largest processes (name, RSS bytes)."""
    federation_rss: int = 0
    """The largest sum while the federation ran (the job's Flower and Ray processes
    alive), as opposed to generating and writing the split before it."""
    federation_top: list[tuple[str, int]] = field(default_factory=list)


def _children_table() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def run_processes(root: int, flwr_home: Path) -> set[int]:
    """``root`` and its descendants, and every process whose FLWR_HOME is ``flwr_home``."""
    children = _children_table()
    found, pending = {root}, [root]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    if flwr_home.exists():
        found.update(process.pid for process in processes_of_home(flwr_home))
    return found


def process_memory(pid: int) -> tuple[str, int, int] | None:
    """(name, RSS bytes, PSS bytes) of ``pid``, or None if it is gone."""
    try:
        status = (PROC / str(pid) / "status").read_text()
        rollup = (PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    pss = next(
        (int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")), 0
    )
    return fields.get("Name", "?").strip(), rss, pss


def sample_until_done(process: subprocess.Popen[str], flwr_home: Path) -> MemoryPeak:
    """Sample the run's summed memory every second until ``process`` exits."""
    peak = MemoryPeak()
    while process.poll() is None:
        rows = [m for pid in run_processes(process.pid, flwr_home) if (m := process_memory(pid))]
        rss = sum(row[1] for row in rows)
        top = sorted(((name, r) for name, r, _ in rows), key=lambda x: -x[1])[:4]
        peak.pss = max(peak.pss, sum(row[2] for row in rows))
        if rss > peak.rss:
            peak.rss, peak.processes, peak.top = rss, len(rows), top
        if len(rows) > 2 and rss > peak.federation_rss:  # more than fedshop-sim and flwr
            peak.federation_rss, peak.federation_top = rss, top
        time.sleep(SAMPLE_SECONDS)
    return peak


def run_cell(
    cell: Cell, work: Path, *, lines: int, items: int, largest: str, fraction: float, seed: int
) -> dict[str, Any]:
    """Run one cell as a subprocess; its figures as a JSON-ready record."""
    out = work / f"run-{cell.storefronts}x{cell.customers}"
    command = [
        str(Path(sys.executable).with_name("fedshop-sim")),
        *("run", "--synthetic", "--out", str(out), "--rounds", "1"),
        *("--synthetic-storefronts", str(cell.storefronts)),
        *("--synthetic-customers", str(cell.customers)),
        *("--synthetic-items", str(items)),
        *("--synthetic-order-lines", str(lines * cell.customers)),
        *("--synthetic-largest-share", largest),
        *("--seed", str(seed)),
        *("--set", f"fraction-train={fraction}", "--set", f"fraction-evaluate={fraction}"),
    ]
    load_before = os.getloadavg()
    began = time.perf_counter()
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        console: list[str] = []
        reader = threading.Thread(target=lambda: console.extend(process.stdout), daemon=True)
        reader.start()
        peak = sample_until_done(process, (out / FLWR_HOME_DIR).resolve())
        reader.join()
    wall = time.perf_counter() - began
    record = {
        "storefronts": cell.storefronts,
        "customers": cell.customers,
        "order_lines": lines * cell.customers,
        "items": items,
        "largest_share": largest,
        "fraction": fraction,
        "exit_code": process.returncode,
        "wall_seconds": wall,
        "load_before": load_before[0],
        "load_after": os.getloadavg()[0],
        "peak": asdict(peak),
        "steps": {m[1]: float(m[2]) for line in console if (m := _STEP_DONE.search(line.strip()))},
        "rounds": {
            m[1]: float(m[3]) for line in console if (m := _ROUND_LINE.search(line.strip()))
        },
        "sites": site_outcomes(out / ROUNDS_LOG, out / STOREFRONTS_DIR / INDEX_FILE),
        "command": " ".join(["fedshop-sim", *command[1:]]),
    }
    (work / f"console-{cell.storefronts}x{cell.customers}.log").write_text("".join(console))
    return record


def site_outcomes(rounds_log: Path, index: Path) -> dict[str, dict[str, int]]:
    """Per model (its first round): sites sampled, accepted, declined, failed, rejected,
    and the customers of the largest storefront that trained (``largest``)."""
    if not rounds_log.exists():
        return {}
    customers = {s["name"]: s["customers"] for s in json.loads(index.read_text())["storefronts"]}
    outcomes = {}
    for line in rounds_log.read_text().splitlines():
        record = json.loads(line)
        if record.get("round") != 1:
            continue
        counts = {k: len(record.get(k, [])) for k in ("accepted", "declined", "failed", "rejected")}
        largest = max((customers.get(site, 0) for site in record.get("accepted", [])), default=0)
        outcomes[record["model"]] = {"sampled": sum(counts.values()), **counts, "largest": largest}
    return outcomes


def load_results(path: Path) -> list[dict[str, Any]]:
    """The results file's records, the last per cell, by storefronts then customers."""
    latest: dict[tuple[int, int], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            latest[(record["storefronts"], record["customers"])] = record
    return [latest[key] for key in sorted(latest)]


def round_seconds(record: dict[str, Any]) -> float:
    """Wall of one round of every model: the sum of the models' round seconds."""
    return sum(record["rounds"].values())


def markdown_table(records: Iterable[dict[str, Any]]) -> str:
    """One row per cell: sizes, round and run wall, peaks, sites, load averages."""
    lines = [
        "| storefronts | customers | order lines | round s (churn + recommender) | "
        "generate + split s | whole run s | peak summed RSS GiB (federation only) | "
        "peak summed PSS GiB | sites sampled / accepted / declined / failed "
        "(churn; recommender) | largest trained site, customers (churn; recommender) | "
        "load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in records:
        rounds = r["rounds"]
        split = sum(s for name, s in r["steps"].items() if name.startswith(("generate", "write")))
        sites = "; ".join(
            f"{o['sampled']} / {o['accepted']} / {o['declined']} / {o['failed']}"
            for o in r["sites"].values()
        )
        per_model = " + ".join(f"{rounds[m]:.0f}" for m in sorted(rounds))
        status = "" if r["exit_code"] == 0 else f" (exit {r['exit_code']})"
        largest = "; ".join(f"{o.get('largest', 0):,}" for o in r["sites"].values())
        lines.append(
            f"| {r['storefronts']:,} | {r['customers']:,} | {r['order_lines']:,} | "
            f"{round_seconds(r):.0f} ({per_model}){status} | {split:.0f} | "
            f"{r['wall_seconds']:.0f} | {r['peak']['rss'] / 1024 / MIB:.2f} "
            f"({r['peak'].get('federation_rss', 0) / 1024 / MIB:.2f}) | "
            f"{r['peak']['pss'] / 1024 / MIB:.2f} | {sites or '—'} | {largest or '—'} | "
            f"{r['load_before']:.1f} → {r['load_after']:.1f} |"
        )
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Wall per round and peak summed RSS against customers, a line per storefront count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for storefronts in sorted({r["storefronts"] for r in records}):
        rows = sorted(
            (r for r in records if r["storefronts"] == storefronts and r["rounds"]),
            key=lambda r: r["customers"],
        )
        customers = [r["customers"] for r in rows]
        label = f"{storefronts:,} storefronts"
        time_axis.plot(customers, [round_seconds(r) for r in rows], "o-", label=label)
        memory_axis.plot(
            customers, [r["peak"]["rss"] / 1024 / MIB for r in rows], "o-", label=label
        )
    time_axis.axhline(TARGET_ROUND_SECONDS, color="grey", linestyle="--", label="target 15 min")
    memory_axis.axhline(TARGET_PEAK_BYTES / 1024 / MIB, color="grey", linestyle="--", label="8 GiB")
    time_axis.set_yscale("log")
    time_axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    memory_axis.set_ylim(0, 1.15 * TARGET_PEAK_BYTES / 1024 / MIB)
    for axis, title in (
        (time_axis, "wall per round, both models (s)"),
        (memory_axis, "peak RSS summed over the run's processes (GiB)"),
    ):
        axis.set_xscale("log")
        axis.set_xlabel("customers (all storefronts)")
        axis.set_title(title, fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _resident_gib() -> float:
    status = (PROC / "self" / "status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / MIB


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


def facts_cost(split: Path) -> str:
    """Seconds and memory of the shared facts of both models derived from ``split``."""
    from models.registry import BUILTIN_MODELS, get_model
    from simulations.shared_facts import split_facts

    models = [get_model(name) for name in BUILTIN_MODELS]
    before, began = _resident_gib(), time.perf_counter()
    for model in models:
        split_facts(model, {}, split)
    return (
        f"shared facts of {', '.join(BUILTIN_MODELS)}: {time.perf_counter() - began:.1f} s; "
        f"RSS {before:.2f} GiB before, {_resident_gib():.2f} after, peak {_peak_gib():.2f}"
    )


def site_cost(split: Path, storefront: str, model_name: str) -> str:
    """Seconds and peak memory of one site's read, featurisation, DP training, evaluation."""
    import pyarrow.parquet as pq
    import torch

    from models.registry import get_model
    from models.schema import ORDERS_FILE
    from models.training import LocalTraining
    from simulations.shared_facts import split_facts

    # As in a simulated ClientApp of 1 CPU (Ray sets OMP_NUM_THREADS to the actor's CPUs):
    # torch's default of one thread per core makes these tiny products wait on each other.
    torch.set_num_threads(1)
    model = get_model(model_name)
    facts = split_facts(model, {}, split)
    seconds = {}
    began = time.perf_counter()
    orders = pq.read_table(split / storefront / ORDERS_FILE).to_pandas()
    seconds["read"] = time.perf_counter() - began
    data = model.site_data(orders, facts)
    seconds["featurise"] = time.perf_counter() - began - sum(seconds.values())
    module = model.build(facts)
    plan = LocalTraining(settings=model.default_training, noise_multiplier=1.0, seed=1)
    steps = model.train(module, data.train, plan).dp_steps
    seconds["DP train"] = time.perf_counter() - began - sum(seconds.values())
    model.evaluate(module.eval(), data.evaluation, 20)
    seconds["evaluate"] = time.perf_counter() - began - sum(seconds.values())
    parts = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    return (
        f"{storefront} ({len(orders):,} lines, {len(data.train):,} training customers), "
        f"{model_name}: {parts} ({steps} DP steps); peak RSS {_peak_gib():.2f} GiB"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the cells asked for, then print the table of every cell and draw the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", type=Cell.parse, action="append", default=[])
    parser.add_argument("--lines", type=int, default=20, help="order lines per customer")
    parser.add_argument("--items", type=int, default=4000, help="catalogue size")
    parser.add_argument(
        "--largest-share", default=ZIPF, help="the largest storefront's share, or 'zipf'"
    )
    parser.add_argument("--fraction", type=float, default=0.1, help="fraction-train/-evaluate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/growth"))
    parser.add_argument("--results", type=Path, default=Path("runs/growth/results.jsonl"))
    parser.add_argument("--plot", type=Path, default=Path("docs/growth.png"))
    parser.add_argument("--facts", type=Path, metavar="SPLIT", help="probe: shared facts")
    parser.add_argument(
        "--site", nargs=3, metavar=("SPLIT", "STOREFRONT", "MODEL"), help="probe: one site"
    )
    args = parser.parse_args(argv)
    if args.facts or args.site:
        load = os.getloadavg()[0]
        if args.facts:
            print(facts_cost(args.facts))
        if args.site:
            print(site_cost(Path(args.site[0]), args.site[1], args.site[2]))
        print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    for cell in args.cell:
        record = run_cell(
            cell,
            args.work,
            lines=args.lines,
            items=args.items,
            largest=args.largest_share,
            fraction=args.fraction,
            seed=args.seed,
        )
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as results:
            results.write(json.dumps(record) + "\n")
        print(f"[growth] {cell}: {json.dumps(record)}", file=sys.stderr, flush=True)
    records = load_results(args.results)
    print(markdown_table(records))
    if records:
        plot(records, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
