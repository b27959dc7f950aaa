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
spans, and reStructuredText's ``::`` literal markers lose their second colon. The source files
are not changed.
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


class DoctestExamples(griffe.Extension):
    """Indents flush-left doctest example sections of every docstring before parsing."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = indent_doctest_examples(obj.docstring.value)
            text = rst_literal_markers(fence_loose_doctests(text))
            obj.docstring.value = sphinx_roles_to_code(text)
