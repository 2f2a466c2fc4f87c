"""``python -m lab bench``: the section splice, analysis blocks it keeps and unmarked text it
refuses to drop, the section registry against BENCHMARKS.md, failures that leave the file
as it was, and a real quick run of the synthetic-data benchmark end to end."""

from __future__ import annotations

import platform
import re
import shutil
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest

from lab import bench, cli
from lab.bench import BenchError, regenerate
from lab.bench_header import HEADING
from lab.benchmarks.sections import (
    BY_HAND,
    FULL,
    QUICK,
    SECTIONS,
    BenchSection,
    section_named,
)
from lab.markdown_sections import (
    ANALYSIS_CLOSE,
    ANALYSIS_OPEN,
    analysis_blocks,
    demote_headings,
    parse,
    splice,
    unmarked_lines,
)

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "BENCHMARKS.md"
ORDER = [HEADING, *(section.heading for section in SECTIONS)]
SYNTHETIC = "Synthetic data generation"


def published_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "BENCHMARKS.md"
    shutil.copyfile(PUBLISHED, copy)
    return copy


def assert_only_changed(before: str, after: str, changed: set[str]) -> None:
    """Preamble and every section not in ``changed`` byte for byte as they were."""
    old, new = parse(before), parse(after)
    assert new.preamble == old.preamble
    kept = {heading: text for heading, text in old.sections if heading not in changed}
    assert {heading: text for heading, text in new.sections if heading not in changed} == kept


def test_parsing_benchmarks_md_gives_back_every_byte() -> None:
    text = PUBLISHED.read_text(encoding="utf-8")
    document = parse(text)
    assert document.render() == text
    assert document.preamble.startswith("# Benchmarks\n")
    assert "Ingest throughput" in document.headings()


def test_splice_replaces_one_section_and_leaves_the_others_byte_identical() -> None:
    text = PUBLISHED.read_text(encoding="utf-8")
    new_section = "## Ingest throughput\n\nCommand: `x`\n\n| a |\n|---|\n| 1 |\n\n\n"
    spliced = splice(text, {"Ingest throughput": new_section}, ORDER)
    assert_only_changed(text, spliced, {"Ingest throughput"})
    assert dict(parse(spliced).sections)["Ingest throughput"] == new_section.rstrip() + "\n\n"
    assert parse(spliced).headings() == parse(text).headings()
    assert splice(spliced, {"Ingest throughput": new_section}, ORDER) == spliced


def test_splice_inserts_a_missing_section_where_the_order_puts_it() -> None:
    text = "# T\n\nintro\n\n## A\n\na\n\n## C\n\nc\n"
    spliced = splice(text, {"B": "## B\nb"}, ["A", "B", "C"])
    assert spliced == "# T\n\nintro\n\n## A\n\na\n\n## B\nb\n\n## C\n\nc\n"
    assert splice(text, {"D": "## D\nd\n\n"}, ["A", "B", "C", "D"]).endswith("## C\n\nc\n## D\nd\n")


def test_a_heading_inside_a_code_fence_is_not_a_section() -> None:
    text = "## A\n\n```bash\n## not a heading\n```\n\n## B\n\nb\n"
    assert parse(text).headings() == ["A", "B"]
    spliced = splice(text, {"B": "## B\n\nnew"}, ["A", "B"])
    assert spliced == "## A\n\n```bash\n## not a heading\n```\n\n## B\n\nnew\n"


def test_splice_refuses_a_new_text_under_another_heading_and_duplicate_headings() -> None:
    with pytest.raises(ValueError, match="starts with '## B'"):
        splice("## A\n\na\n", {"A": "## B\n\nb\n"}, ["A"])
    with pytest.raises(ValueError, match="more than once: A"):
        parse("## A\n\n## A\n")


def test_demoted_compare_output_is_one_section() -> None:
    printed = "# Runs\n\n## churn: roc-auc\n\n| a |\n\n```\n# kept\n```\n"
    demoted = demote_headings(printed)
    assert demoted == "## Runs\n\n### churn: roc-auc\n\n| a |\n\n```\n# kept\n```\n"
    assert parse(demoted).headings() == ["Runs"]


def analysed(*lines: str) -> str:
    """An analysis block holding ``lines``."""
    return "\n".join([ANALYSIS_OPEN, *lines, ANALYSIS_CLOSE]) + "\n"


def test_analysis_blocks_survive_a_splice_byte_for_byte_in_their_subsection() -> None:
    old_section = (
        "## B\n\nCommand: `b --old`\n\n"
        + analysed("Intro, by hand:", "", "| target | met |", "|---|---|", "| x ≥ 0.5 | yes |")
        + "\n### t1\n\n| run | s |\n|---|---:|\n| a | 1.5 |\n\n"
        + analysed("Why t1 took 1.5 s,", "wrapped by hand.")
        + "\n### gone\n\n"
        + analysed("Under a subsection the new output lacks.")
        + "\n### t2\n\n| run | s |\n|---|---:|\n| b | 2,000 |\n"
    )
    text = "# T\n\n## A\n\na\n\n" + old_section + "\n## C\n\nc\n"
    new_section = (
        "## B\n\nCommand: `b --new`\n\n### t1\n\n| run | s |\n|---|---:|\n| a | 0.9 |\n\n\n"
        "### t2\n\n| run | s |\n|---|---:|\n| b | 1,234 |\n"
    )
    blocks = analysis_blocks(old_section)
    assert [block.subsection for block in blocks] == [None, "### t1", "### gone"]
    assert unmarked_lines(old_section, new_section) == ["### gone"]

    spliced = splice(text, {"B": new_section}, ["A", "B", "C"])
    assert_only_changed(text, spliced, {"B"})
    assert dict(parse(spliced).sections)["B"] == (
        "## B\n\nCommand: `b --new`\n\n"
        + blocks[0].text
        + "\n### t1\n\n| run | s |\n|---|---:|\n| a | 0.9 |\n\n"
        + blocks[1].text
        + "\n### t2\n\n| run | s |\n|---|---:|\n| b | 1,234 |\n\n"
        + blocks[2].text
        + "\n"
    )
    for block in blocks:
        assert spliced.count(block.text) == 1
    assert splice(spliced, {"B": new_section}, ["A", "B", "C"]) == spliced, "not idempotent"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (f"## A\n\n{ANALYSIS_OPEN}\nx\n", "is not closed"),
        (f"## A\n\nx\n{ANALYSIS_CLOSE}\n", "line 4 closes an analysis block that is not open"),
        (f"## A\n\n{ANALYSIS_OPEN}\n{ANALYSIS_OPEN}\n", "line 4 opens an analysis block inside"),
    ],
    ids=["unclosed", "stray-close", "nested"],
)
def test_analysis_markers_must_pair_up(section: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        analysis_blocks(section)
    assert analysis_blocks(f"## A\n\n```\n{ANALYSIS_OPEN}\n```\n") == [], "fenced: no marker"


def test_unmarked_lines_are_those_the_new_output_does_not_print_again() -> None:
    old = (
        "## S\n\nCommand: `s --sizes 3` (median of 3 seeds)\n\n| n | s |\n|---:|---:|\n"
        "| 1,000 | 0.50 |\n| 3,000 | 1.58 |\n\nTarget 30 s: met (worst +1.58 s).\n\n"
        "The second row is slow because\nthe cache was cold.\n\n"
        + analysed("Kept: the 3,000 row ran while", "another job shared the cores.")
    )
    new = (
        "## S\n\nCommand: `s --sizes 1` (median of 1 seeds)\n\n| n | s |\n|---:|---:|\n"
        "| 100 | 0.07 |\n\nTarget 30 s: met (worst -0.7 s).\n"
    )
    # Other figures, another Command: line, a row fewer: all printed by the command.
    assert unmarked_lines(old, new) == ["The second row is slow because", "the cache was cold."]
    assert unmarked_lines(old, new.replace(": met", ": NOT met"))[0] == (
        "Target 30 s: met (worst +1.58 s)."
    )


def regenerate_with_outputs(
    monkeypatch: pytest.MonkeyPatch, outputs: dict[str, str]
) -> list[BenchSection]:
    """Sections whose command "prints" ``outputs[heading]`` (no subprocess)."""
    monkeypatch.setattr(
        bench, "run_section", lambda section, mode, output: outputs[section.heading]
    )
    return [section for section in SECTIONS if section.heading in outputs]


def without_analysis(section_text: str) -> str:
    """What a command printing ``section_text`` but not its analysis would print."""
    for block in analysis_blocks(section_text):
        section_text = section_text.replace(block.text, "")
    return section_text


def test_the_analysis_of_benchmarks_md_survives_a_full_regeneration_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = published_copy(tmp_path)
    before = output.read_text(encoding="utf-8")
    old = dict(parse(before).sections)
    # Every figure changes ("0" -> "1"); the words outside the analysis blocks do not.
    outputs = {
        section.heading: re.sub(r"\n.*", lambda body: body[0].replace("0", "1"), text, flags=re.S)
        for section in SECTIONS
        for text in [without_analysis(old[section.heading])]
    }
    selected = regenerate_with_outputs(monkeypatch, outputs)
    regenerate(output, selected, FULL)
    after = output.read_text(encoding="utf-8")
    assert_only_changed(before, after, {HEADING, *outputs})
    new = dict(parse(after).sections)
    for section in SECTIONS:
        blocks = analysis_blocks(old[section.heading])
        assert analysis_blocks(new[section.heading]) == blocks, section.name
        for block in blocks:
            assert block.text in new[section.heading]


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("compare", "Issue #4 targets, from these tables:"),
        ("compare", "| federated DP ε = 8, churn ROC-AUC ≥ 0.74 | 0.7396 (0.735–0.746) | missed"),
        ("compare", "the centralized runs\nin-process, then four real"),
        ("compare", "### privacy of the federated DP runs (per site, as the sites reported"),
        ("federation_cost", "which hides part of its overhead (SuperLink, Ray start-up"),
        ("wire_bytes", "goes to each site once per run, zlib-packed"),
        ("cli_startup", "| `fedshop-sim --help` | 7.95 | 1.07 | 7.4 |"),
        ("cli_startup", "`fedshop-sim` used to import the whole training stack"),
        ("cli_startup", "which `python -m lab bench` keeps as it is and does not recreate."),
        ("serving", "Target (the product brief): p99 ≤ 20 ms at 200 requests/s"),
        ("serving", "contention gives `serve` a core of its own."),
        ("serving", "Batch recommend runs the same per-customer scoring"),
    ],
)
def test_the_hand_written_analysis_of_benchmarks_md_is_marked(name: str, phrase: str) -> None:
    heading = section_named(name).heading
    section = dict(parse(PUBLISHED.read_text(encoding="utf-8")).sections)[heading]
    assert phrase in section
    assert any(phrase in block.text for block in analysis_blocks(section)), phrase


def test_unmarked_hand_written_text_makes_the_run_refuse_and_leaves_the_file_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = published_copy(tmp_path)
    text = output.read_text(encoding="utf-8")
    old = dict(parse(text).sections)[SYNTHETIC]
    hand_written = "Generation is I/O bound above a million lines.\nSecond line, by hand."
    output.write_text(text.replace(old, old.rstrip("\n") + "\n\n" + hand_written + "\n\n"))
    before = output.read_bytes()
    regenerate_with_outputs(monkeypatch, {SYNTHETIC: old})
    argv = ["bench", "--full", "--section", "synthetic", "--output", str(output)]

    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"python -m lab: error: section 'synthetic' would lose hand-written text ({output} left "
        "as it was): 'Generation is I/O bound above a million lines.' (and 1 more) is not "
        "printed by `python -m lab.benchmarks.synthetic`; put it between "
        f"'{ANALYSIS_OPEN}' and '{ANALYSIS_CLOSE}', or pass --discard-unmarked"
    )
    assert output.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS.md"], "a temporary file is left"

    assert cli.main([*argv, "--discard-unmarked"]) == 0
    after = output.read_text(encoding="utf-8")
    assert "I/O bound" not in after
    assert dict(parse(after).sections)[SYNTHETIC] == old


def test_mismatched_markers_stop_the_run_before_any_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = published_copy(tmp_path)
    text = output.read_text(encoding="utf-8")
    old = dict(parse(text).sections)[SYNTHETIC]
    output.write_text(text.replace(old, old + ANALYSIS_OPEN + "\nnever closed\n\n"))
    before = output.read_bytes()
    ran: list[str] = []
    monkeypatch.setattr(bench, "run_section", lambda section, *_: ran.append(section.name))
    with pytest.raises(BenchError, match=f"section '## {SYNTHETIC}': an analysis block is not"):
        regenerate(output, [section_named("synthetic")], FULL)
    assert ran == []
    assert output.read_bytes() == before


def test_every_registered_section_is_in_benchmarks_md() -> None:
    headings = [h for h in parse(PUBLISHED.read_text(encoding="utf-8")).headings() if h != HEADING]
    registered = [s.heading for s in SECTIONS] + [s.heading for s in BY_HAND]
    assert [h for h in registered if h not in headings] == []
    assert sorted(registered) == sorted(headings), "a section of BENCHMARKS.md is unregistered"
    generated = [h for h in headings if h in {s.heading for s in SECTIONS}]
    assert generated == [s.heading for s in SECTIONS], "SECTIONS must keep the file's order"


def test_list_shows_every_section_with_its_quick_and_full_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["bench", "--list"]) == 0
    listing = capsys.readouterr().out
    for section in SECTIONS:
        assert f"{section.name}: ## {section.heading}\n" in listing
        assert f"    quick  {section.command('quick')}\n" in listing
        assert f"    full   {section.command('full')}" in listing
    for by_hand in BY_HAND:
        assert f"## {by_hand.heading}\n    from `{by_hand.command}`" in listing
    assert "python -m lab.benchmarks.synthetic --sizes 100000 300000" in listing
    assert "python -m lab compare --out runs/compare --seeds 0,1,2\n" in listing
    assert f"hand-written analysis: a section's lines from '{ANALYSIS_OPEN}' to\n" in listing
    cli_startup = listing.split("cli_startup: ", 1)[1].split("\n")
    assert cli_startup[3].startswith("    note   full mode times this checkout only; the ")


def test_an_unknown_section_name_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.md"
    code = cli.main(["bench", "--quick", "--section", "nope", "--output", str(output)])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("python -m lab: error: no benchmark section 'nope'; sections: ")
    assert "synthetic" in error and "ingest" in error and "\n" not in error
    assert not output.exists()


def test_bench_without_a_mode_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--section", "synthetic"]) == 2
    assert "choose --quick" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (("--sizes", "not-a-number"), "exited with code 2"),
        (("--help",), "printed ['no ## heading'], not the one section"),
    ],
    ids=["command-fails", "prints-no-section"],
)
def test_a_failing_section_leaves_the_file_untouched(
    tmp_path: Path, broken: tuple[str, ...], message: str
) -> None:
    output = published_copy(tmp_path)
    before = output.read_bytes()
    synthetic = section_named("synthetic")
    failing = replace(synthetic, name="broken-synthetic", quick=broken)
    with pytest.raises(BenchError) as raised:
        regenerate(output, [synthetic, failing], QUICK)
    assert str(raised.value).startswith(
        f"section 'broken-synthetic' failed ({output} left as it was): "
    )
    assert message in str(raised.value)
    assert output.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS.md"], "a temporary file is left"


def synthetic_rows(section: str) -> list[tuple[int, int, float, int, float]]:
    """(order lines, customers, seconds, lines per second, time ÷ smallest) per row."""
    rows = []
    for line in section.splitlines():
        match = re.fullmatch(
            r"\| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \| ([\d,]+) \| ([\d.]+) \(size × [\d.]+\) \|",
            line,
        )
        if match:
            lines, customers, seconds, per_second, ratio = match.groups()
            rows.append(
                (
                    int(lines.replace(",", "")),
                    int(customers.replace(",", "")),
                    float(seconds),
                    int(per_second.replace(",", "")),
                    float(ratio),
                )
            )
    return rows


@pytest.mark.slow
def test_a_quick_run_of_the_synthetic_section_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    published = published_copy(tmp_path)
    before = published.read_text(encoding="utf-8")

    # Without --output, quick mode writes its own file and leaves BENCHMARKS.md alone.
    assert cli.main(["bench", "--quick", "--section", "synthetic"]) == 0
    assert published.read_text(encoding="utf-8") == before
    quick_file = tmp_path / "runs" / "bench" / "BENCHMARKS.quick.md"
    assert parse(quick_file.read_text(encoding="utf-8")).headings() == [HEADING, SYNTHETIC]
    progress = capsys.readouterr().err
    assert re.search(r"\[python -m lab bench\] 1/1 synthetic: done in \d+\.\d s\n", progress)

    # With --output, only the synthetic section and the header change.
    assert cli.main(["bench", "--quick", "--section", "synthetic", "--output", str(published)]) == 0
    after = published.read_text(encoding="utf-8")
    assert_only_changed(before, after, {SYNTHETIC, HEADING})
    document = parse(after)
    assert document.headings()[:2] == [HEADING, "Baselines (bundled data, fixed protocols)"]
    section = dict(document.sections)[SYNTHETIC]
    command = "python -m lab.benchmarks.synthetic --sizes 100000 300000 --repeats 1"
    assert f"Command: `{command}`" in section

    rows = synthetic_rows(section)
    assert [row[:2] for row in rows] == [(100_000, 1_111), (300_000, 3_333)]
    for lines, _, seconds, per_second, _ in rows:
        assert 0 < seconds < 30
        # the table rounds seconds to 0.01 s, lines per second from the unrounded time
        assert lines / (seconds + 0.005) <= per_second <= lines / max(seconds - 0.005, 1e-9)
    assert rows[0][4] == 1.0 and rows[1][4] > 0
    assert re.search(r"Target 30 s per million lines: (met|NOT met)", section)

    header = dict(document.sections)[HEADING]
    assert f"| Python | {platform.python_version()} |" in header
    versions = " / ".join(metadata.version(name) for name in ("torch", "flwr", "opacus"))
    assert f"| torch / flwr / opacus | {versions} |" in header
    assert "`python -m lab bench --quick` run" in header
    assert re.search(r"\| synthetic \| \d+\.\d \| generator seeds 0 … repeats − 1", header)
