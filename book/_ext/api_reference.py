"""Sphinx extension for the API reference (book/api.md): this checkout's package, plain docstrings.

Autodoc imports ``diffusion_tutorial`` from the repository that is being built, ahead of any
other installed copy, so the page always describes the code next to it.

The docstrings are shown as preformatted plain text. They are written for ``help()`` in a notebook: plain text
with formulas laid out over several lines, such as ``x_s = sqrt(alpha_bar_s) x0_hat + ...``.
Parsed as reStructuredText, their ``*``, ``|`` and trailing ``_`` become markup and their
indented formula lines become definition lists, so the page would garble the maths (or the
``-W`` build would fail). This extension turns each docstring into a ``text`` code block before
Sphinx parses it, so the reader sees exactly what ``help()`` prints, with two simplifications
that ``help()`` readers do in their head: ````x```` becomes ``x``, and a role such as
``:func:`~pkg.mod.f``` becomes ``f``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # book/_ext/ -> repository root

_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]*?)(?:\s*<([^>]*)>)?`")
_CITE = re.compile(r"\{cite\}`([^`]*)`")
_LITERAL = re.compile(r"``(.+?)``")


def _plain(line: str) -> str:
    """One docstring line without reStructuredText roles, citations and literal markup."""

    def role(m: re.Match) -> str:
        tilde, title, target = m.groups()
        text = target or title
        return text.rsplit(".", 1)[-1] if tilde else text

    line = _CITE.sub(
        lambda m: "[" + ", ".join(k.strip() for k in m.group(1).split(",")) + "]", line
    )
    line = _ROLE.sub(role, line)
    return _LITERAL.sub(r"\1", line)


def preformat(app, what, name, obj, options, lines: list[str]) -> None:
    """``autodoc-process-docstring`` handler: replace ``lines`` in place by one text block."""
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return
    body = ["   " + _plain(line) if line.strip() else "" for line in lines]
    lines[:] = [".. code-block:: text", ""] + body + [""]


def drop_object_base(app, name, obj, options, bases: list) -> None:
    """``autodoc-process-bases`` handler: "Bases: object" says nothing; other bases stay."""
    bases[:] = [b for b in bases if b is not object]


def setup(app):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    app.connect("autodoc-process-docstring", preformat)
    app.connect("autodoc-process-bases", drop_object_base)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
