"""Notebooks are stored without outputs: the book build executes them (d2l's rule)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT


def _tracked_notebooks() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        files = out.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist)
        files = []
    return files or sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").rglob("*.ipynb"))


NOTEBOOKS = _tracked_notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_has_no_stored_outputs(path):
    nb = json.loads((ROOT / path).read_text())
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, (
        f"{path}: code cells {dirty} have stored outputs; clear them with "
        f"`jupyter nbconvert --clear-output --inplace {path}`"
    )


COLAB_INSTALL = '%pip install -q "diffusion-tutorial @ git+https://github.com/diffusion-tutorial/diffusion-tutorial"'


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_installs_the_package_in_colab(path):
    """The first code cell installs the package when the notebook runs in Colab, with the same
    command as the README. nbval never executes that line (it is skipped outside Colab), so a
    formatter that cuts it short (as once happened: ``%pip i``) is caught only here."""
    nb = json.loads((ROOT / path).read_text())
    first = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    lines = [ln.strip() for ln in first.splitlines()]
    assert 'if "google.colab" in sys.modules:' in lines and COLAB_INSTALL in lines, (
        f"{path}: the first code cell must install the package in Colab with `{COLAB_INSTALL}`"
    )
