"""A Markdown document as its ``## `` sections, and the splice that replaces some of them.

A section runs from its ``## `` heading line up to the next ``## `` heading line (or the
end of the document); what comes before the first heading is the preamble. Lines inside
fenced code blocks are never headings. Splicing replaces exactly the named sections and
leaves every other byte of the document as it was, so regenerating one benchmark cannot
disturb the figures of another.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

HEADING_PREFIX = "## "
FENCE = "```"


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
    blank line (or by the end of the document, if it is the last section). A section the
    document lacks is inserted before the first section that ``order`` puts after it, or
    at the end. Every other section, and the preamble, stay byte for byte.

    Args:
        text: the current document.
        replacements: heading -> the section's new text, starting ``## <heading>``.
        order: every heading in the order the document should have them (headings the
            document has but ``order`` does not name stay where they are).

    Raises:
        ValueError: a new text does not start with its own heading.
    """
    for heading, new_text in replacements.items():
        if heading_of(new_text) != heading:
            raise ValueError(
                f"the new text of section {heading!r} starts with {new_text.splitlines()[0]!r}"
            )
    document = parse(text)
    sections = [
        (heading, replacements.get(heading, section)) for heading, section in document.sections
    ]
    missing = [heading for heading in replacements if heading not in document.headings()]
    for heading in sorted(missing, key=lambda h: order.index(h) if h in order else len(order)):
        sections.insert(_insertion_point(sections, heading, order), (heading, ""))
    last = len(sections) - 1
    pieces = [document.preamble]
    for index, (heading, section) in enumerate(sections):
        if heading in replacements:
            if pieces[-1] and not pieces[-1].endswith("\n"):
                pieces.append("\n")  # a document without a final newline
            section = replacements[heading].rstrip() + ("\n" if index == last else "\n\n")
        pieces.append(section)
    return "".join(pieces)


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
