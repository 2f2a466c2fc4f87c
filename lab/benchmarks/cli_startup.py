"""Benchmark: wall time of the console scripts' light commands, as Markdown for BENCHMARKS.md.

Each command runs as a fresh process through the installed console script (``fedshop-sim
--help``, a small ``fedshop-sim synth``, ``fedshop-site keygen``, ``fedshop-server certs
--help``), next to a bare ``python -c pass`` for the interpreter's own start-up. With
``--baseline DIR`` every command also runs on another checkout of the code (e.g. an
older commit unpacked with ``git archive``), put first on ``PYTHONPATH`` so the same
console scripts import it instead; the rounds are interleaved, so load from other
processes hits both alike. Each figure is the best of ``--repeats`` rounds. Run::

    python -m lab.benchmarks.cli_startup [--baseline DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = Path(sys.executable).parent
HEAVY_MODULES = ("torch", "opacus", "flwr", "matplotlib")
CLI_MODULES = ("simulations.cli", "clients.cli", "server.cli")

COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "python -c pass": lambda _: [sys.executable, "-c", "pass"],
    "fedshop-sim --help": lambda _: [str(SCRIPTS_DIR / "fedshop-sim"), "--help"],
    "fedshop-sim synth (200 lines)": lambda scratch: [
        str(SCRIPTS_DIR / "fedshop-sim"),
        *("synth", "--out", str(scratch / "split"), "--storefronts", "2"),
        *("--customers", "20", "--items", "10", "--order-lines", "200"),
    ],
    "fedshop-site keygen": lambda scratch: [
        str(SCRIPTS_DIR / "fedshop-site"),
        *("keygen", "--key", str(scratch / "site.key")),
    ],
    "fedshop-server certs --help": lambda _: [
        str(SCRIPTS_DIR / "fedshop-server"),
        *("certs", "--help"),
    ],
}
"""What is timed, by label: the argv of each command given a fresh scratch directory."""


def time_command(label: str, code_root: Path) -> float:
    """Seconds one run of ``COMMANDS[label]`` takes with ``code_root`` first on the path."""
    with tempfile.TemporaryDirectory() as scratch:
        argv = COMMANDS[label](Path(scratch))
        started = time.perf_counter()
        subprocess.run(argv, env=_environment(code_root), capture_output=True, check=True)
        return time.perf_counter() - started


def heavy_modules_loaded(code_root: Path) -> list[str]:
    """Which of ``HEAVY_MODULES`` importing the three command-line modules loads."""
    probe = (
        f"import sys, {', '.join(CLI_MODULES)}; "
        f"print(' '.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    # ``python -c`` puts the working directory first on the path: run it in code_root.
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=code_root,
        env=_environment(code_root),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


def _environment(code_root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code_root)}


def main(argv: list[str] | None = None) -> int:
    """Measure and print the Markdown section; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m lab.benchmarks.cli_startup")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best one counts")
    args = parser.parse_args(argv)
    roots = {"this": CODE_ROOT}
    if args.baseline is not None:
        roots["baseline"] = args.baseline.resolve()

    best = {(label, name): float("inf") for label in COMMANDS for name in roots}
    for _ in range(args.repeats):
        for label in COMMANDS:
            for name, root in roots.items():
                best[label, name] = min(best[label, name], time_command(label, root))

    command = " ".join(["python -m lab.benchmarks.cli_startup", *(argv or sys.argv[1:])])
    columns = [f"{name} s" for name in roots] + [f"{name} ÷ python" for name in roots]
    if "baseline" in roots:
        columns.append("baseline ÷ this")
    lines = [
        "## Console-script start-up",
        "",
        f"Command: `{command}` (best of {args.repeats} interleaved rounds; 2 shared cores).",
        "",
        "| command | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for label in COMMANDS:
        seconds = [best[label, name] for name in roots]
        ratios = [best[label, name] / best["python -c pass", name] for name in roots]
        cells = [f"{value:.2f}" for value in seconds] + [f"{value:.1f}" for value in ratios]
        if "baseline" in roots:
            cells.append(f"{best[label, 'baseline'] / best[label, 'this']:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, root in roots.items():
        loaded = ", ".join(heavy_modules_loaded(root)) or "none"
        lines.append(f"Heavy modules loaded by importing the CLI modules ({name}): {loaded}.")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
