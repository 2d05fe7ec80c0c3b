"""Every book equation a docstring cites exists in the book, and is cited by its `eq-` label.

The house style cites a book equation as ``eq. (eq-<label>)`` (or ``eqs. (eq-a), (eq-b)``), and
only when a notebook or book page defines that label: ``$$ ... $$ (eq-<label>)``,
``:label: eq-<label>`` or ``(eq-<label>)=``. Docstrings of chapters not written yet cite the paper's
equation instead ("Ho et al. 2020, eq. 4"), which these checks leave alone.
"""

from __future__ import annotations

import ast
import json
import re

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "diffusion_tutorial"

# A citation: "eq. (" or "eqs. (" then one or more parenthesised labels, comma or "and" separated.
CITATION = re.compile(r"\beqs?\.\s*((?:\([^()\s]+\)(?:\s*(?:,|and|,\s*and)\s*)?)+)", re.IGNORECASE)
LABEL_IN_PARENS = re.compile(r"\(([^()\s]+)\)")
BOOK_LABEL_CITE = re.compile(r"\((eq-[a-z0-9-]+)\)")
# Where the book defines a label (MyST dollarmath label, math directive option, target).
DEFINITIONS = (
    re.compile(r"\$\$\s*\((eq-[a-z0-9-]+)\)"),
    re.compile(r":label:\s*(eq-[a-z0-9-]+)"),
    re.compile(r"^\((eq-[a-z0-9-]+)\)=\s*$", re.MULTILINE),
)


def cited_labels(text: str) -> tuple[set[str], set[str]]:
    """(labels cited as book equations, labels after "eq. (" that lack the eq- prefix)."""
    book = set(BOOK_LABEL_CITE.findall(text))
    unprefixed = set()
    for group in CITATION.findall(text):
        for label in LABEL_IN_PARENS.findall(group):
            if not label.startswith("eq-") and not re.fullmatch(r"[\d.]+[a-z]?", label):
                unprefixed.add(label)  # "eq. (4)" is a paper's equation number, not a book label
    return book, unprefixed


def defined_labels(text: str) -> set[str]:
    """Equation labels a MyST page or notebook markdown defines."""
    return {label for pattern in DEFINITIONS for label in pattern.findall(text)}


def book_texts() -> list[str]:
    """The markdown of every book page and every notebook's markdown cells."""
    texts = [p.read_text() for p in sorted((ROOT / "book").rglob("*.md"))]
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        cells = json.loads(path.read_text())["cells"]
        texts += ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    return texts


def docstrings(path) -> str:
    """All docstrings of a module (module, classes, functions, methods), joined."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = [tree] + [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    return "\n".join(doc for node in nodes if (doc := ast.get_docstring(node)))


BOOK_LABELS = set().union(*(defined_labels(t) for t in book_texts()))
MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_book_defines_labels():
    assert BOOK_LABELS, "no equation labels found in book/ or notebooks/: is the pattern wrong?"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docstring_equation_citations_exist(path):
    book, unprefixed = cited_labels(docstrings(path))
    missing = sorted(book - BOOK_LABELS)
    assert not missing, (
        f"{path.relative_to(ROOT)} cites {missing}, which no notebook or book page defines; cite "
        f"the paper's equation until the chapter exists (Book: <chapter> (Part N))"
    )
    assert not unprefixed, (
        f"{path.relative_to(ROOT)} cites eq. ({sorted(unprefixed)[0]}) without the `eq-` prefix: "
        f"book labels are `eq. (eq-<label>)`; a paper's equation is `Author et al. year, eq. N`"
    )


# The checks above must fail on wrong input: the parsers, on known strings.
@pytest.mark.parametrize(
    "text, book, unprefixed",
    [
        (
            "Book: Forward process, eq. (eq-fwd-closed-form). Ho et al. 2020, eq. 4.",
            {"eq-fwd-closed-form"},
            set(),
        ),
        ("Book: Forward process, eq. (fwd-closed-form).", set(), {"fwd-closed-form"}),
        ("eqs. (eq-a), (eq-b) and (c-d)", {"eq-a", "eq-b"}, {"c-d"}),
        ("Lu et al. 2022, eq. (3.4); Song et al. 2021, Eq. (12)", set(), set()),
        ("the mean (the first moment) of x", set(), set()),
    ],
)
def test_citation_parser(text, book, unprefixed):
    assert cited_labels(text) == (book, unprefixed)


def test_definition_parser():
    text = "$$\nx = 1\n$$ (eq-one)\n\n```{math}\n:label: eq-two\ny\n```\n\n(eq-three)=\n$$z$$\n"
    assert defined_labels(text) == {"eq-one", "eq-two", "eq-three"}
    assert defined_labels("see {eq}`eq-one` and (eq-one) in the text") == set()
