"""``python -m lab bench``: regenerate BENCHMARKS.md section by section.

Each selected section of :data:`lab.benchmarks.sections.SECTIONS` runs as a
subprocess of this interpreter (``python -m <module> <arguments of the mode>``, with
``PYTHONHASHSEED=0``); its Markdown stdout becomes the section, and a progress line per
section with its wall time goes to stderr. Then the header section (machine, versions,
seeds, date, mode: :mod:`lab.bench_header`) and the regenerated sections are
spliced into the output file (:mod:`lab.markdown_sections`), every other byte
left as it was, and the file is replaced atomically. If any section fails, or prints
something that is not its section, the run stops with one error naming it and the file
is not touched.

Hand-written analysis survives: a section's text between the lines
``<!-- analysis: kept by python -m lab bench -->`` and ``<!-- /analysis -->`` is carried
verbatim into its new text, at the end of the ``### `` subsection it stood in
(:func:`lab.markdown_sections.with_analysis`). Any other line of the old section
that the command did not print again (numbers aside; the ``Command:`` line is always the
new run's) would be lost, so the run stops right after that section's command, naming
the section and the first such line, and leaves the file as it was, unless
``--discard-unmarked`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common.atomic_files import atomic_write
from lab.bench_header import HEADING, SectionRun, header_section, machine_facts
from lab.benchmarks.sections import (
    BY_HAND,
    FULL,
    MODES,
    QUICK,
    SECTIONS,
    BenchSection,
    section_named,
)
from lab.markdown_sections import (
    ANALYSIS_CLOSE,
    ANALYSIS_OPEN,
    analysis_blocks,
    parse,
    splice,
    unmarked_lines,
)
from simulations.progress import Progress

DEFAULT_OUTPUTS = {FULL: Path("BENCHMARKS.md"), QUICK: Path("runs/bench/BENCHMARKS.quick.md")}
"""Where each mode writes without ``--output``: quick runs never touch the published file."""
FAILURE_TAIL_LINES = 15
"""How many of a failed section's last stderr lines are shown."""
NEW_DOCUMENT = {
    QUICK: "# Benchmarks (quick mode)\n\n"
    "CI-sized runs of `python -m lab bench --quick`: smaller sizes, fewer rounds and repeats\n"
    "than the published figures of BENCHMARKS.md, so only their shape and rough ratios\n"
    "compare.\n\n",
    FULL: "# Benchmarks\n\n",
}
"""What an output file that does not exist yet starts as, per mode."""


class BenchError(Exception):
    """A bench run cannot proceed or a section failed; shown to the user as one line."""


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``bench (--quick | --full) [--section NAME ...] [--output FILE]
    [--discard-unmarked] [--list]``."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const=QUICK,
        help=f"CI-sized sizes, rounds and repeats; writes {DEFAULT_OUTPUTS[QUICK]} by default",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const=FULL,
        help=f"the published figures' arguments; writes {DEFAULT_OUTPUTS[FULL]} by default",
    )
    parser.add_argument(
        "--section",
        action="append",
        default=[],
        metavar="NAME",
        help="regenerate only this section (repeatable; default: every section; see --list)",
    )
    parser.add_argument("--output", type=Path, help="the Markdown file to update")
    parser.add_argument(
        "--discard-unmarked",
        action="store_true",
        help="replace a section even if it has lines its command no longer prints and no "
        f"'{ANALYSIS_OPEN}' ... '{ANALYSIS_CLOSE}' block keeps (default: refuse, naming "
        "the first one)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the sections with their quick and full commands, and run nothing",
    )


def run_bench(args: argparse.Namespace) -> int:
    """List the sections, or regenerate the selected ones into the output file."""
    if args.list:
        print(section_listing())
        return 0
    if args.mode is None:
        raise BenchError(
            f"choose --quick (CI-sized, writes {DEFAULT_OUTPUTS[QUICK]}) or --full (the "
            f"published figures, writes {DEFAULT_OUTPUTS[FULL]})"
        )
    output: Path = args.output or DEFAULT_OUTPUTS[args.mode]
    regenerate(
        output, select_sections(args.section), args.mode, discard_unmarked=args.discard_unmarked
    )
    return 0


def regenerate(
    output: Path, selected: Sequence[BenchSection], mode: str, *, discard_unmarked: bool = False
) -> None:
    """Run ``selected`` in ``mode`` and splice them, with the header, into ``output``.

    Each section's analysis blocks are carried into its new text. Unless
    ``discard_unmarked``, a section whose old text has a line outside them that its
    command no longer prints (:func:`~lab.markdown_sections.unmarked_lines`)
    stops the run as soon as its command has run.

    Raises:
        BenchError: ``output`` cannot be split into sections or its analysis markers do
            not pair up, a section failed, or a section would lose unmarked lines;
            ``output`` is then left as it was.
    """
    current = output.read_text(encoding="utf-8") if output.exists() else NEW_DOCUMENT[mode]
    try:
        old_sections = dict(parse(current).sections)
    except ValueError as error:
        raise BenchError(f"{output}: {error}") from None
    for section in selected:
        try:
            analysis_blocks(old_sections.get(section.heading, ""))
        except ValueError as error:
            raise BenchError(f"{output}: section '## {section.heading}': {error}") from None

    facts = machine_facts()
    progress = Progress("python -m lab bench")
    texts: dict[str, str] = {}
    runs: list[SectionRun] = []
    for number, section in enumerate(selected, 1):
        began = time.perf_counter()
        with progress.step(f"{number}/{len(selected)} {section.name}"):
            texts[section.heading] = run_section(section, mode, output)
        if not discard_unmarked and section.heading in old_sections:
            refuse_lost_lines(section, mode, output, old_sections[section.heading], texts)
        runs.append(SectionRun(section.name, section.seeds, time.perf_counter() - began))
    texts[HEADING] = header_section(facts, mode, runs, dt.datetime.now(dt.UTC))
    order = [HEADING, *(section.heading for section in SECTIONS)]
    atomic_write(output, splice(current, texts, order))
    print(f"[python -m lab bench] wrote {len(selected)} section(s) to {output}", file=sys.stderr)


def refuse_lost_lines(
    section: BenchSection, mode: str, output: Path, old: str, texts: dict[str, str]
) -> None:
    """Stop if ``section``'s new text would lose lines of ``old`` that no analysis block keeps.

    Raises:
        BenchError: naming the section, the first lost line and how many more there are.
    """
    lost = unmarked_lines(old, texts[section.heading])
    if lost:
        more = f" (and {len(lost) - 1} more)" if len(lost) > 1 else ""
        raise BenchError(
            f"section {section.name!r} would lose hand-written text ({output} left as it "
            f"was): {lost[0]!r}{more} is not printed by `{section.command(mode)}`; put it "
            f"between '{ANALYSIS_OPEN}' and '{ANALYSIS_CLOSE}', or pass --discard-unmarked"
        )


def select_sections(names: Sequence[str]) -> list[BenchSection]:
    """The sections ``--section`` names, each once, in the order given (all if none).

    Raises:
        BenchError: a name is not a section's.
    """
    if not names:
        return list(SECTIONS)
    try:
        return [section_named(name) for name in dict.fromkeys(names)]
    except LookupError as error:
        raise BenchError(str(error)) from None


def run_section(section: BenchSection, mode: str, output: Path) -> str:
    """Run ``section``'s command in ``mode`` and return the section's Markdown.

    Raises:
        BenchError: the command failed, or printed something other than the section.
    """
    argv = [sys.executable, "-m", section.module, *section.arguments(mode)]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=False,
    )
    failed = f"section {section.name!r} failed ({output} left as it was)"
    if result.returncode != 0:
        for line in result.stderr.rstrip().splitlines()[-FAILURE_TAIL_LINES:]:
            print(f"    {line}", file=sys.stderr)
        raise BenchError(
            f"{failed}: `{section.command(mode)}` exited with code {result.returncode}"
        )
    text = section.postprocess(result.stdout) if section.postprocess else result.stdout
    document = parse(text)
    if document.preamble.strip() or document.headings() != [section.heading]:
        printed = document.headings() or ["no ## heading"]
        raise BenchError(
            f"{failed}: `{section.command(mode)}` printed {printed}, not the one section "
            f"'## {section.heading}'"
        )
    return with_command_line(document.render().strip() + "\n", section.command(mode))


def with_command_line(section_text: str, command: str) -> str:
    """``section_text`` with a ``Command:`` line under its heading if it has none."""
    if any(line.startswith("Command:") for line in section_text.splitlines()):
        return section_text
    heading, _, body = section_text.partition("\n")
    return f"{heading}\n\nCommand: `{command}`\n\n{body.lstrip(chr(10))}"


def section_listing() -> str:
    """Every section with its quick and full commands, then the hand-written ones."""
    lines = []
    for section in SECTIONS:
        lines.append(f"{section.name}: ## {section.heading}")
        lines += [f"    {mode:5}  {section.command(mode)}" for mode in MODES]
        if section.note:
            lines.append(f"    note   {section.note}")
    lines += [
        "",
        f"hand-written analysis: a section's lines from '{ANALYSIS_OPEN}' to",
        f"'{ANALYSIS_CLOSE}' (each marker alone on its line) are kept verbatim, at the end",
        "of their ### subsection; any other line the command no longer prints (numbers",
        "aside) stops the run, unless --discard-unmarked",
        "",
        "written by hand (bench leaves them as they are):",
    ]
    for by_hand in BY_HAND:
        lines += [
            f"## {by_hand.heading}",
            f"    from `{by_hand.command}`: {by_hand.source}",
        ]
    return "\n".join(lines)
