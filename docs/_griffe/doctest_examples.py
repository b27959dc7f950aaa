"""Griffe extension: render the package's reStructuredText-flavoured docstrings as Markdown.

The docstrings of keras-topomap write examples as a header followed by flush-left doctest lines::

    Example:

    >>> x = 1

Google style (and griffe's parser) expects a section's body to be indented and to follow the
header directly, so left alone the ``>>>`` lines would render as nested Markdown block quotes.
Before a docstring is parsed, this extension renames such a header to ``Examples:`` (griffe
knows the plural only), drops the blank line and indents the body, so griffe renders the doctests
as Python console code. Flush-left doctests anywhere else (e.g. after ``Example (Python):``) are
fenced as console code, Sphinx roles (``:func:`x```), which Markdown cannot read, become code
spans, reStructuredText's ``::`` literal markers lose their second colon, and its simple tables
become Markdown tables. The source files are not changed.
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE_HEADER = re.compile(r"^Examples?:\s*$")
# A flush-left Google section header (``Returns:``, ``Note:``...) ends an example body.
_SECTION_HEADER = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")


_SPHINX_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc):`(~?)([^`]+)`")


def sphinx_roles_to_code(text: str) -> str:
    """Turn Sphinx cross-reference roles (``:func:`~a.b```) into Markdown code spans (`` `b` ``).

    A leading ``~`` keeps the last dotted component only, as Sphinx shows it.
    """

    def code_span(match: re.Match) -> str:
        target = match.group(2)
        if match.group(1):
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    return _SPHINX_ROLE.sub(code_span, text)


def indent_doctest_examples(text: str) -> str:
    """Indent the flush-left body of every ``Example:`` section whose body starts with ``>>>``."""
    lines = text.split("\n")
    out = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not _EXAMPLE_HEADER.match(line):
            out.append(line)
            continue
        first = index
        while first < len(lines) and not lines[first].strip():
            first += 1
        if first == len(lines) or not lines[first].startswith(">>>"):
            out.append(line)
            continue
        # Griffe knows the plural only; the singular would be read as an admonition.
        out.append("Examples:")
        # Google sections take no blank line between the header and the body.
        index = first
        while index < len(lines):
            body_line = lines[index]
            if _SECTION_HEADER.match(body_line) and not lines[index - 1].strip():
                break
            out.append("    " + body_line if body_line.strip() else body_line)
            index += 1
    return "\n".join(out)


def fence_loose_doctests(text: str) -> str:
    """Fence flush-left doctest blocks outside example sections as Python console code."""
    lines = text.split("\n")
    out = []
    index = 0
    while index < len(lines):
        if not lines[index].startswith(">>>"):
            out.append(lines[index])
            index += 1
            continue
        out.append("```pycon")
        while index < len(lines) and lines[index].strip():
            out.append(lines[index])
            index += 1
        out.append("```")
    return "\n".join(out)


def rst_literal_markers(text: str) -> str:
    """Drop reStructuredText's ``::`` literal-block markers (the indented block stays code).

    ``Usage::`` becomes ``Usage:``, as reStructuredText shows it; a line that is only ``::``
    goes. Only lines followed (after blank lines) by a more indented line count.
    """
    lines = text.split("\n")
    out = []
    for index, line in enumerate(lines):
        stripped = line.rstrip()
        if stripped.endswith("::"):
            following = next((nxt for nxt in lines[index + 1 :] if nxt.strip()), "")
            indent = len(line) - len(line.lstrip())
            if len(following) - len(following.lstrip()) > indent:
                if stripped.strip() == "::":
                    continue
                line = stripped[:-1]
        out.append(line)
    return "\n".join(out)


_RST_BORDER = re.compile(r"^(\s*)=+(?:\s+=+)+\s*$")


def _table_row(line, starts, indent):
    line = line[indent:] if line[:indent].strip() == "" else line.lstrip()
    ends = [*starts[1:], None]
    return [line[start:end].strip() for start, end in zip(starts, ends)]


def rst_simple_tables(text: str) -> str:
    """Turn reStructuredText simple tables (``===  ===`` borders) into Markdown tables.

    The column starts are those of the ``=`` runs of the top border; the last column runs to the
    end of the line. A row whose first cell is empty continues the row above it. A table has a
    header when three borders frame it, none when two do (then the second is followed by a blank
    line or the end of the docstring).
    """
    lines = text.split("\n")
    out = []
    index = 0
    while index < len(lines):
        border = _RST_BORDER.match(lines[index])
        if not border:
            out.append(lines[index])
            index += 1
            continue
        indent = len(border.group(1))
        starts = [m.start() - indent for m in re.finditer(r"=+", lines[index])]
        rows, borders, end = [], [], index + 1
        while end < len(lines):
            line = lines[end]
            end += 1
            if _RST_BORDER.match(line):
                borders.append(len(rows))
                if len(borders) == 2 or end == len(lines) or not lines[end].strip():
                    break
            elif line.strip():
                cells = _table_row(line, starts, indent)
                segment_start = borders[-1] if borders else 0
                if len(rows) > segment_start and not cells[0]:
                    rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
                else:
                    rows.append(cells)
        if not borders or not rows:  # not a complete table: leave the text as it is
            out.append(lines[index])
            index += 1
            continue
        header_rows = borders[0] if len(borders) == 2 else 0
        header = rows[:header_rows] if header_rows else [[""] * len(starts)]
        body = rows[header_rows:]
        cells = [[cell.replace("|", "\\|") for cell in row] for row in [header[0], *body]]
        out.append("| " + " | ".join(cells[0]) + " |")
        out.append("|" + "---|" * len(starts))
        out.extend("| " + " | ".join(row) + " |" for row in cells[1:])
        index = end
    return "\n".join(out)


class DoctestExamples(griffe.Extension):
    """Indents flush-left doctest example sections of every docstring before parsing."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = indent_doctest_examples(obj.docstring.value)
            text = rst_simple_tables(rst_literal_markers(fence_loose_doctests(text)))
            obj.docstring.value = sphinx_roles_to_code(text)
