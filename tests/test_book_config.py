"""The book's configuration: table of contents, repository URL in one place, citations."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.conftest import ROOT

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
REPO_URL = CONFIG["repository"]["url"]


def toc_files() -> list[str]:
    """Every file named in _toc.yml, without its extension, root first."""
    files = [TOC["root"]]

    def walk(entries):
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))

    for part in TOC.get("parts", []):
        walk(part.get("chapters", []))
    walk(TOC.get("chapters", []))
    return files


@pytest.mark.parametrize("name", toc_files())
def test_toc_entry_exists(name):
    matches = [p for ext in (".md", ".ipynb") if (p := ROOT / f"{name}{ext}").exists()]
    assert len(matches) == 1, (
        f"_toc.yml names {name!r}, which must exist as exactly one .md or .ipynb"
    )


def test_every_notebook_is_in_the_toc():
    listed = set(toc_files())
    notebooks = {
        str(p.relative_to(ROOT).with_suffix("")) for p in ROOT.glob("notebooks/**/*.ipynb")
    }
    notebooks = {n for n in notebooks if ".ipynb_checkpoints" not in n}
    assert notebooks <= listed, f"notebooks missing from _toc.yml: {sorted(notebooks - listed)}"


def test_execution_settings():
    execute = CONFIG["execute"]
    # A plain `jupyter-book build .` executes every notebook; `make test` and `make book` build from
    # a copy of this config that reads nbval's outputs from a cache (tests/nbval_cache.py).
    assert execute["execute_notebooks"] == "force"
    assert execute["timeout"] >= 600  # training cells in full mode take minutes
    assert execute["allow_errors"] is False
    assert CONFIG["only_build_toc_files"] is True
    assert CONFIG["sphinx"]["config"]["nb_merge_streams"] is True


def test_exclude_patterns_name_paths_of_the_project():
    """Every plain folder or file the build excludes belongs to the repository (no tool folders)."""
    generated = {".venv", "_build"}  # created by `make`
    for pattern in CONFIG["exclude_patterns"]:
        if pattern in generated or any(ch in pattern for ch in "*?["):
            continue
        assert (ROOT / pattern).exists(), (
            f"_config.yml excludes {pattern!r}, which is not in the repo"
        )


def test_fast_build_config_changes_only_where_outputs_come_from(tmp_path):
    """`make test` and `make book` build from tests/nbval_cache.py's copy of this config: same book."""
    pytest.importorskip("nbformat")  # the `book` extra
    from tests import nbval_cache as script

    fast = script.build_config(CONFIG, tmp_path / "cache")
    assert fast["execute"].pop("execute_notebooks") == "cache"
    assert fast["execute"].pop("cache") == str((tmp_path / "cache").resolve())
    for name, folder in (fast.get("sphinx", {}).get("local_extensions") or {}).items():
        assert folder == str((ROOT / CONFIG["sphinx"]["local_extensions"][name]).resolve())
        fast["sphinx"]["local_extensions"][name] = CONFIG["sphinx"]["local_extensions"][name]
    expected = {
        **CONFIG,
        "execute": {k: v for k, v in CONFIG["execute"].items() if k != "execute_notebooks"},
    }
    assert fast == expected
    pages = {str(p.relative_to(ROOT).with_suffix("")) for p in script.toc_notebooks()}
    notebooks = {n for n in toc_files() if (ROOT / f"{n}.ipynb").exists()}
    assert notebooks == pages, "nbval executes every notebook of the book before the build"


def test_mathjax_is_local():
    path = CONFIG["sphinx"]["config"]["mathjax_path"]
    assert not path.startswith(("http:", "https:", "//")), "MathJax must be served locally"


def _notebook_sources():
    for path in sorted(ROOT.glob("notebooks/**/*.ipynb")):
        nb = json.loads(path.read_text())
        yield path, "\n".join("".join(c["source"]) for c in nb["cells"])


GITHUB_URL = re.compile(
    r"https://github\.com/[\w.-]+/[\w.-]+(?![\w.-])(?!/(?:issues|pull|discussions)/\d)"
)
"""A GitHub repository URL, except a link into another project's issue or pull-request thread
(a citation, such as RePaint's typo report, not a place the book points readers to install from)."""


def test_repository_url_defined_once():
    """_config.yml defines the URL; the README and the Colab install cells must agree with it."""
    texts = [(ROOT / "README.md", (ROOT / "README.md").read_text())]
    texts += list(_notebook_sources())
    for path, text in texts:
        for url in GITHUB_URL.findall(text):
            assert url.rstrip(".") == REPO_URL, (
                f"{path.name} uses {url}, _config.yml says {REPO_URL}"
            )


def test_citations_exist_in_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    sources = [(p, p.read_text()) for p in ROOT.glob("book/*.md")] + list(_notebook_sources())
    for path, text in sources:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
            for key in group.split(","):
                assert key.strip() in keys, f"{path.name} cites unknown key {key.strip()!r}"
