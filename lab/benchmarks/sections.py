"""Which command makes each ``## `` section of BENCHMARKS.md, in quick and full mode.

:data:`SECTIONS` lists, in the file's order, every section a command prints as Markdown:
its heading (exactly as in BENCHMARKS.md), the module run with ``python -m``, the
arguments of the published figures (``full``, as the section's ``Command:`` line has
them) and CI-sized ones (``quick``: smaller sizes, fewer rounds and repeats, so that
all quick sections together take a few minutes on 2 cores). ``python -m lab bench``
(:mod:`lab.bench`) runs them and splices their output into the file.

:data:`BY_HAND` lists the sections no command prints: they are written from the output
of the command they name, and ``bench`` leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lab.markdown_sections import demote_headings

QUICK = "quick"
FULL = "full"
MODES = (QUICK, FULL)
SITE_SEEDS = (
    "per simulated site and round, 10⁶ × simulation-seed (default 0) + 1000 × round + the "
    "site's index"
)


@dataclass(frozen=True)
class BenchSection:
    """A section of BENCHMARKS.md printed, heading first, by one command."""

    name: str
    """What ``--section`` calls it."""
    heading: str
    """The heading, without ``## ``, as the command prints it."""
    module: str
    """Run as ``python -m <module> <arguments>``."""
    prog: str
    """How the section's ``Command:`` line spells ``python -m <module>``."""
    quick: tuple[str, ...]
    full: tuple[str, ...]
    seeds: str
    """The seeds behind the figures, for the header block."""
    postprocess: Callable[[str], str] | None = None
    """Turns the command's stdout into the section, when it prints more than one."""
    note: str = ""
    """What ``--list`` should add: e.g. what the section shows that its command does not
    recreate (kept as an analysis block)."""

    def arguments(self, mode: str) -> tuple[str, ...]:
        """The command's arguments in ``mode`` (``"quick"`` or ``"full"``)."""
        return {QUICK: self.quick, FULL: self.full}[mode]

    def command(self, mode: str) -> str:
        """The command as a user types it."""
        return " ".join([self.prog, *self.arguments(mode)])


@dataclass(frozen=True)
class HandWrittenSection:
    """A section of BENCHMARKS.md written by hand from a command's output."""

    heading: str
    command: str
    source: str
    """Where its figures come from."""


def _benchmark(
    name: str,
    heading: str,
    quick: tuple[str, ...],
    full: tuple[str, ...],
    seeds: str,
    note: str = "",
) -> BenchSection:
    module = f"lab.benchmarks.{name}"
    return BenchSection(name, heading, module, f"python -m {module}", quick, full, seeds, note=note)


SECTIONS: tuple[BenchSection, ...] = (
    _benchmark(
        "baselines",
        "Baselines (bundled data, fixed protocols)",
        quick=(),
        full=(),
        seeds="churn MLP torch seed 0; the protocols' fixed holdout",
    ),
    _benchmark(
        "ingest",
        "Ingest throughput",
        quick=("--copies", "1"),
        full=(),
        seeds="none (timing; a fresh random site key)",
    ),
    _benchmark(
        "synthetic",
        "Synthetic data generation",
        quick=("--sizes", "100000", "300000", "--repeats", "1"),
        full=(),
        seeds="generator seeds 0 … repeats − 1 per size",
    ),
    _benchmark(
        "accountants",
        "Utility by privacy accountant (PLD vs RDP)",
        quick=("--epsilons", "8", "--rounds", "1"),
        full=(),
        seeds=SITE_SEEDS,
    ),
    BenchSection(
        "compare",
        "Centralized, federated and storefront-alone runs, with and without DP",
        module="lab",
        prog="python -m lab",
        quick=("compare", "--out", "runs/bench/compare", "--quick", "--no-federated"),
        full=("compare", "--out", "runs/compare", "--seeds", "0,1,2"),
        seeds=f"training and simulation-seed 0, 1, 2 (quick: 0); federated: {SITE_SEEDS}",
        postprocess=demote_headings,
    ),
    _benchmark(
        "federation_cost",
        "Federation cost (simulated federation ÷ sequential local training)",
        quick=(
            *("--synthetic-storefronts", "4", "--synthetic-customers", "100"),
            *("--models", "churn", "--rounds", "1"),
        ),
        full=(),
        seeds=f"{SITE_SEEDS}; synthetic storefronts: seed 0",
    ),
    _benchmark(
        "wire_bytes",
        "Bytes per site and round (train messages)",
        quick=(),
        full=(),
        seeds=SITE_SEEDS,
    ),
    _benchmark(
        "dp_step",
        "DP training step cost (recommender)",
        quick=("--batch-sizes", "256", "--batches", "2", "--rounds", "2"),
        full=(),
        seeds="torch seed 0 (batches and model)",
    ),
    _benchmark(
        "cli_startup",
        "Console-script start-up",
        quick=("--repeats", "1"),
        full=(),
        seeds="none (timing)",
        note="full mode times this checkout only; the published before/after table "
        "(--baseline <checkout of 3e5f588>) is an analysis block it keeps, not recreates",
    ),
    _benchmark(
        "membership",
        "Membership-inference audit",
        quick=("--quick",),
        full=("--references", "16", "--json", "simulations/data/membership-audit.json"),
        seeds="seed 0 (non-member draw, targets; references seed 1 …)",
    ),
    _benchmark(
        "noisy_evaluation",
        "Noisy evaluation against exact (issue #19)",
        quick=("--releases", "20"),
        full=("--run", "runs/main", "--releases", "200", "--run-epsilons", "1", "3", "8"),
        seeds="stochastic rounding seed 0; the noise is OpenDP's (unseeded)",
    ),
    _benchmark(
        "serving",
        "Serving at a storefront (recommendations API, batch recommend)",
        quick=("--seconds", "3"),
        full=("--bundle", "runs/main/bundle"),
        seeds="none (timing; customers in storefront order)",
    ),
)
"""Every section a command prints, in BENCHMARKS.md's order."""

ARCHIVE_COMMIT = "baf677f"
"""The last commit holding the archived decision studies' code."""

BY_HAND: tuple[HandWrittenSection, ...] = (
    HandWrittenSection(
        "Federated main job (bundled storefronts, both models, DP at ε = 8)",
        "./dev.sh main",
        "runs/main/rounds.jsonl, privacy_report.json and the console's wall time",
    ),
    HandWrittenSection(
        "Per-message overhead (issue #11: ≤ 50 ms per site-round)",
        "python -m lab.benchmarks.federation_cost --synthetic-storefronts N"
        " --synthetic-customers M --models churn --rounds R",
        "two runs of that command, before and after a change, and one fedshop-sim run",
    ),
    HandWrittenSection(
        "Beyond one machine: a Ray cluster (issue #11)",
        "ray start --head …; ray start --address …; fedshop-sim run --ray-address …",
        "a recorded drill: the commands as run, their wall times and where ClientApps ran",
    ),
    HandWrittenSection(
        "Scale: growth and a million customers (issue #11)",
        "python -m lab.benchmarks.growth --cell STOREFRONTSxCUSTOMERS ...",
        "its table and docs/growth.png (one fedshop-sim run per cell, tens of minutes at 1M), "
        "its --facts/--site probes, and before/after runs of the same command",
    ),
    *(
        HandWrittenSection(
            heading,
            f"python -m lab.benchmarks.{name}, at commit {ARCHIVE_COMMIT}",
            f"a settled decision study, archived (issue #20): its code is `git show "
            f"{ARCHIVE_COMMIT}:lab/benchmarks/{name}.py`, its section kept as it last ran",
        )
        for name, heading in (
            ("rolling_cutoff", "Time-respecting evaluation (weekly rolling cutoff, issue #12)"),
            ("federated_choices", "Rounds and server optimiser on validation (issue #12)"),
            ("hidden_size", "Hidden-layer width on validation (issue #12)"),
            ("recommender_candidates", "Recommender candidates on validation (issue #12)"),
        )
    ),
)
"""Sections written by hand from a command's output; ``bench`` keeps them as they are."""


def section_named(name: str) -> BenchSection:
    """The section ``--section name`` selects.

    Raises:
        LookupError: no section has that name; the message lists the names there are.
    """
    for section in SECTIONS:
        if section.name == name:
            return section
    raise LookupError(
        f"no benchmark section {name!r}; sections: {', '.join(s.name for s in SECTIONS)}"
    )
