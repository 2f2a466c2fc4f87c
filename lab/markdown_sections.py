"""A Markdown document as its ``## `` sections, and the splice that replaces some of them.

A section runs from its ``## `` heading line up to the next ``## `` heading line (or the
end of the document); what comes before the first heading is the preamble. Lines inside
fenced code blocks are never headings. Splicing replaces exactly the named sections and
leaves every other byte of the document as it was, so regenerating one benchmark cannot
disturb the figures of another.

Hand-written analysis inside a section survives its regeneration when it stands between
the marker lines :data:`ANALYSIS_OPEN` and :data:`ANALYSIS_CLOSE` (each alone on its
line, outside code fences): the splice carries every such block, markers included, byte
for byte into the section's new text, under the same ``### `` subsection it stood in
(:func:`with_analysis`). Text outside the markers belongs to the command that prints the
section; :func:`unmarked_lines` names the lines of it a regeneration would lose.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

HEADING_PREFIX = "## "
SUBHEADING_PREFIX = "### "
FENCE = "```"
ANALYSIS_OPEN = "<!-- analysis: kept by python -m lab bench -->"
"""Opens a block of hand-written analysis that a section's regeneration keeps verbatim."""
ANALYSIS_CLOSE = "<!-- /analysis -->"
"""Closes the block :data:`ANALYSIS_OPEN` opened."""
COMMAND_PREFIX = "Command:"
"""A section's line saying how it was made; a regeneration always writes its own."""
_NUMBER = re.compile(r"[+\-−]?\d(?:[\d,.]*\d)?")


@dataclass(frozen=True)
class Document:
    """The preamble and the sections of a Markdown text, in order."""

    preamble: str
    sections: tuple[tuple[str, str], ...]
    """``(heading, text)``: the heading without ``## ``; the text from the heading line
    through the last character before the next heading, its trailing newlines included."""

    def headings(self) -> list[str]:
        """Every section's heading, in document order."""
        return [heading for heading, _ in self.sections]

    def render(self) -> str:
        """The document as text (``parse(text).render() == text``)."""
        return self.preamble + "".join(text for _, text in self.sections)


def parse(text: str) -> Document:
    """Split ``text`` into its preamble and ``## `` sections.

    Raises:
        ValueError: two sections have the same heading (a splice would be ambiguous).
    """
    starts: list[int] = []
    offset = 0
    for line, fenced in _lines(text):
        if not fenced and line.startswith(HEADING_PREFIX):
            starts.append(offset)
        offset += len(line)
    bounds = [*starts, len(text)]
    sections = tuple(
        (heading_of(text[start:end]), text[start:end]) for start, end in pairwise(bounds)
    )
    headings = [heading for heading, _ in sections]
    repeated = sorted({heading for heading in headings if headings.count(heading) > 1})
    if repeated:
        raise ValueError(f"sections appear more than once: {', '.join(repeated)}")
    return Document(text[: bounds[0]], sections)


def demote_headings(text: str) -> str:
    """Every heading one level deeper (``# T`` -> ``## T``): a whole document's output
    becomes one section."""
    return "".join(
        "#" + line if not fenced and line.startswith("#") else line for line, fenced in _lines(text)
    )


def heading_of(section_text: str) -> str:
    """The heading of a section's text: its first line without ``## ``.

    Raises:
        ValueError: the text does not start with a ``## `` heading line.
    """
    first_line = section_text.split("\n", 1)[0]
    if not first_line.startswith(HEADING_PREFIX):
        raise ValueError(f"a section must start with '{HEADING_PREFIX}<heading>': {first_line!r}")
    return first_line[len(HEADING_PREFIX) :].strip()


def splice(text: str, replacements: Mapping[str, str], order: Sequence[str]) -> str:
    """``text`` with the sections named in ``replacements`` replaced by their new text.

    A new text is used from its heading line to its last non-blank line, followed by one
    blank line (or by the end of the document, if it is the last section); the replaced
    section's analysis blocks are carried into it (:func:`with_analysis`). A section the
    document lacks is inserted before the first section that ``order`` puts after it, or
    at the end. Every other section, and the preamble, stay byte for byte.

    Args:
        text: the current document.
        replacements: heading -> the section's new text, starting ``## <heading>``.
        order: every heading in the order the document should have them (headings the
            document has but ``order`` does not name stay where they are).

    Raises:
        ValueError: a new text does not start with its own heading, or a replaced
            section's analysis markers do not pair up (:func:`analysis_blocks`).
    """
    for heading, new_text in replacements.items():
        if heading_of(new_text) != heading:
            raise ValueError(
                f"the new text of section {heading!r} starts with {new_text.splitlines()[0]!r}"
            )
    document = parse(text)
    sections = [
        (heading, with_analysis(replacements[heading], analysis_blocks(section)))
        if heading in replacements
        else (heading, section)
        for heading, section in document.sections
    ]
    missing = [heading for heading in replacements if heading not in document.headings()]
    for heading in sorted(missing, key=lambda h: order.index(h) if h in order else len(order)):
        sections.insert(
            _insertion_point(sections, heading, order), (heading, replacements[heading])
        )
    last = len(sections) - 1
    pieces = [document.preamble]
    for index, (heading, section) in enumerate(sections):
        if heading in replacements:
            if pieces[-1] and not pieces[-1].endswith("\n"):
                pieces.append("\n")  # a document without a final newline
            section = section.rstrip() + ("\n" if index == last else "\n\n")
        pieces.append(section)
    return "".join(pieces)


@dataclass(frozen=True)
class AnalysisBlock:
    """Hand-written analysis in a section, kept when the section is regenerated."""

    subsection: str | None
    """The ``### `` heading line (stripped) it stands under; ``None`` before the first."""
    text: str
    """From its :data:`ANALYSIS_OPEN` line through its :data:`ANALYSIS_CLOSE` line, line
    ends included: exactly what the regenerated section carries."""


def analysis_blocks(section_text: str) -> list[AnalysisBlock]:
    """The analysis blocks of a section, in order.

    Raises:
        ValueError: a marker does not pair up: a block opened inside another, closed
            without being opened, or not closed before the section ends (a ``## `` line
            inside a block ends the section).
    """
    blocks: list[AnalysisBlock] = []
    subsection: str | None = None
    opened: list[str] | None = None
    for number, (line, fenced, marker) in enumerate(_analysis_lines(section_text), 1):
        if marker == ANALYSIS_OPEN:
            if opened is not None:
                raise ValueError(f"line {number} opens an analysis block inside another")
            opened = [line]
        elif marker == ANALYSIS_CLOSE:
            if opened is None:
                raise ValueError(f"line {number} closes an analysis block that is not open")
            last = line if line.endswith("\n") else line + "\n"
            blocks.append(AnalysisBlock(subsection, "".join([*opened, last])))
            opened = None
        elif opened is not None:
            opened.append(line)
        elif not fenced and line.startswith(SUBHEADING_PREFIX):
            subsection = line.strip()
    if opened is not None:
        raise ValueError(
            f"an analysis block is not closed with '{ANALYSIS_CLOSE}' before the section ends"
        )
    return blocks


def with_analysis(section_text: str, blocks: Sequence[AnalysisBlock]) -> str:
    """A new section text with ``blocks`` carried in, each byte for byte.

    A block goes at the end of its subsection in the new text: after the last line
    before the ``### `` heading that follows the block's own ``### `` heading (before
    the first ``### `` heading for a block that stood above every one), or at the end of
    the section if the new text lacks its subsection. Blocks keep their order and stand
    between blank lines.
    """
    if not blocks:
        return section_text
    lines = [line for line, _ in _lines(section_text)]
    subheadings = [
        index
        for index, (line, fenced) in enumerate(_lines(section_text))
        if not fenced and line.startswith(SUBHEADING_PREFIX)
    ]

    def position(block: AnalysisBlock) -> int:
        if block.subsection is None:
            return subheadings[0] if subheadings else len(lines)
        starts = [index for index in subheadings if lines[index].strip() == block.subsection]
        if not starts:
            return len(lines)
        return next((index for index in subheadings if index > starts[0]), len(lines))

    at: dict[int, list[str]] = {}
    for block in blocks:
        at.setdefault(position(block), []).append(block.text)
    pieces, start = [], 0
    for index in sorted(at):
        pieces.append("".join(lines[start:index]).rstrip("\n") + "\n\n")
        pieces.append("\n".join(at[index]) + ("\n" if index < len(lines) else ""))
        start = index
    pieces.append("".join(lines[start:]))
    return "".join(pieces)


def unmarked_lines(old_section: str, new_section: str) -> list[str]:
    """The lines of ``old_section`` that regenerating it as ``new_section`` would lose.

    A line is kept if it is blank, the heading, a ``Command:`` line (the new text says
    how it was made), inside an analysis block, or printed again: ``new_section`` has a
    line equal to it once every number in both is masked (figures change between runs,
    words do not). Every other line is hand-written text the command does not print.
    """
    printed = {_shape(line) for line in new_section.splitlines()}
    lost = []
    inside = False
    for number, (line, _, marker) in enumerate(_analysis_lines(old_section)):
        if marker is not None:
            inside = marker == ANALYSIS_OPEN
            continue
        text = line.strip()
        if inside or number == 0 or not text or text.startswith(COMMAND_PREFIX):
            continue
        if _shape(text) not in printed:
            lost.append(text)
    return lost


def _shape(line: str) -> str:
    """A line with its numbers masked and its outer whitespace stripped."""
    return _NUMBER.sub("#", line.strip())


def _analysis_lines(text: str) -> Iterator[tuple[str, bool, str | None]]:
    """Each line with its line end, whether it is fenced, and which analysis marker it
    is (``None`` for none)."""
    for line, fenced in _lines(text):
        stripped = line.strip()
        is_marker = not fenced and stripped in (ANALYSIS_OPEN, ANALYSIS_CLOSE)
        yield line, fenced, stripped if is_marker else None


def _insertion_point(sections: list[tuple[str, str]], heading: str, order: Sequence[str]) -> int:
    later = set(order[order.index(heading) + 1 :]) if heading in order else set()
    for index, (existing, _) in enumerate(sections):
        if existing in later:
            return index
    return len(sections)


def _lines(text: str) -> Iterator[tuple[str, bool]]:
    """Each line of ``text`` with its line end, and whether it belongs to a fenced code
    block (the fence lines included)."""
    in_fence = False
    for line in text.splitlines(keepends=True):
        opens_or_closes = line.lstrip().startswith(FENCE)
        in_fence ^= opens_or_closes
        yield line, in_fence or opens_or_closes
