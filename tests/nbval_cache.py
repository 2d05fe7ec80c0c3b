"""pytest plugin: nbval executes the book's notebooks once, and the book build reads their outputs.

`make test` (fast mode) and `make book` (full mode) run

    python -m pytest -p tests.nbval_cache --nbval-lax --nbval-current-env --nbval-cell-timeout=900 \
        -n 2 --dist loadfile --no-loadscope-reorder --book-cache _build/fast/_build/.jupyter_cache \
        --book-config-out _build/fast/_config.yml notebooks

(fast mode adds DIFFUSION_TUTORIAL_FAST=1; the cell timeout is _config.yml's execute.timeout)

nbval runs every code cell of every notebook of _toc.yml as a test item, in a kernel started in
the notebook's own folder (as the book build does); `--dist loadfile` keeps all cells of one
notebook on one xdist worker, so two notebooks run at a time, the later chapters (the longer ones)
first. This plugin adds what the book needs:

1. Each kernel gets its share of the CPU cores (OMP_NUM_THREADS = cores // workers, so one torch
   thread per kernel with two workers on two cores), set before the workers and kernels start.
2. Once a cell fails, the notebook's later cells are skipped: nbval's report names the notebook and
   the first failing cell, not a cascade of NameErrors after it.
3. When the last cell of a notebook has run and every cell passed, the worker writes the notebook
   with the outputs nbval collected (``IPyNbCell.test_outputs``: nbformat output nodes, streams
   already merged) into a staging folder. At the end of the session the controller stores each one
   in the build's jupyter-cache (the cache key is jupyter-cache's hash of the code cells, which is
   what MyST-NB looks up) and removes the cache entries of notebooks that failed.
4. It writes the build config: _config.yml with ``execute_notebooks: cache`` and that cache, so the
   build takes every notebook's outputs from the cache and executes no notebook a second time.
   MyST text pages with code (book/intro.md, book/model_cards.md) are not collected by nbval; the
   build executes those itself (a few seconds each).

Without ``--book-cache`` the plugin only sets threads and skips after a failure.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGE = "nbval_executed"  # folder beside the cache: executed notebooks waiting for the controller


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nbval_cache", "book build cache filled from nbval's outputs")
    group.addoption(
        "--book-cache",
        type=Path,
        default=None,
        help="jupyter-cache folder to fill with each notebook that passed, with its outputs",
    )
    group.addoption(
        "--book-config-out",
        type=Path,
        default=None,
        help="write _config.yml here with `execute_notebooks: cache` and --book-cache",
    )


def toc_notebooks() -> set[Path]:
    """The .ipynb pages named in _toc.yml (the only notebooks the book builds)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return {
        (ROOT / f"{name}.ipynb").resolve() for name in names if (ROOT / f"{name}.ipynb").exists()
    }


def build_config(config: dict, cache: Path) -> dict:
    """A copy of the book config whose build takes every notebook's outputs from ``cache``."""
    config = copy.deepcopy(config)
    config["execute"]["execute_notebooks"] = "cache"
    config["execute"]["cache"] = str(cache.resolve())
    # Jupyter Book resolves local extension folders against the config file's folder.
    local = config.get("sphinx", {}).get("local_extensions") or {}
    for name, folder in local.items():
        local[name] = str((ROOT / folder).resolve())
    return config


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _stage(config: pytest.Config) -> Path | None:
    cache = config.getoption("book_cache")
    return None if cache is None else cache.resolve().parent / STAGE


def pytest_configure(config: pytest.Config) -> None:
    if not (config.getoption("nbval", False) or config.getoption("nbval_lax", False)):
        return
    if _is_worker(config):
        return
    # 1. Threads: workers and their kernels inherit this environment.
    workers = config.getoption("numprocesses", None)
    workers = workers if isinstance(workers, int) and workers > 0 else 1
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("MKL_NUM_THREADS", threads)
    # 4. The build config, and an empty staging folder for this run.
    cache, config_out = config.getoption("book_cache"), config.getoption("book_config_out")
    if config_out is not None:
        if cache is None:
            raise pytest.UsageError("--book-config-out needs --book-cache")
        book = build_config(yaml.safe_load((ROOT / "_config.yml").read_text()), cache)
        config_out.parent.mkdir(parents=True, exist_ok=True)
        config_out.write_text(
            "# Written by tests/nbval_cache.py from _config.yml; do not edit.\n"
            + yaml.safe_dump(book, sort_keys=False, allow_unicode=True)
        )
    if (stage := _stage(config)) is not None:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Only the notebooks of _toc.yml: a notebook outside the book is not executed."""
    if collection_path.suffix == ".ipynb" and config.getoption("book_cache") is not None:
        return collection_path.resolve() not in toc_notebooks() or None
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Later chapters first: they train and sample more (35-60 s each in fast mode against 8-35 s
    for Part 1), so the short notebooks fill the end and neither worker idles long while the other
    finishes a long one. The order is the same on every worker, as xdist requires."""
    if config.getoption("book_cache") is None:
        return
    order = {path: rank for rank, path in enumerate(sorted(toc_notebooks(), reverse=True))}
    items.sort(key=lambda item: order.get(Path(item.path).resolve(), -1))


# --- on the worker that runs a notebook's cells -------------------------------------------------

_failed: set[str] = set()  # nodeids of notebooks with a failing cell, in this process
_started: dict[str, float] = {}  # nodeid of each notebook -> when its first cell was set up


def _notebook_of(item: pytest.Item) -> pytest.Collector | None:
    parent = item.parent
    return parent if parent is not None and hasattr(item, "test_outputs") else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    nb = _notebook_of(item)
    if nb is not None:
        _started.setdefault(nb.nodeid, time.perf_counter())  # the kernel starts with cell 0
    if nb is not None and nb.nodeid in _failed:
        pytest.skip(f"an earlier cell of {nb.nodeid} failed")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    nb = _notebook_of(item)
    if nb is not None and report.failed:
        _failed.add(nb.nodeid)
    return report


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After a notebook's last cell: stage it with its outputs, or mark it failed."""
    nb = _notebook_of(item)
    stage = _stage(item.config)
    if nb is None or stage is None or (nextitem is not None and nextitem.parent is nb):
        return
    path = Path(nb.path).resolve()
    name = path.relative_to(ROOT)
    target = stage / str(name).replace(os.sep, "__")
    info = {"uri": str(path), "seconds": time.perf_counter() - _started.get(nb.nodeid, 0.0)}
    if nb.nodeid in _failed:
        target.with_suffix(".failed").write_text(json.dumps(info))
        return
    executed = copy.deepcopy(nb.nb)  # the notebook as nbval read it, cells in order
    code = [c for c in executed.cells if c.cell_type == "code"]
    ran = {c.cell_num: c for c in item.session.items if c.parent is nb}
    if len(ran) != len(code):  # some cells were deselected: these outputs are not the notebook's
        return
    for number, cell in enumerate(code):
        # nbval's outputs of the cell: nbformat output nodes, streams merged (None if skipped)
        cell.outputs = [nbformat.from_dict(dict(o)) for o in ran[number].test_outputs or []]
        cell.execution_count = number + 1
    nbformat.write(executed, target.with_suffix(".ipynb"))
    target.with_suffix(".passed").write_text(json.dumps(info))


# --- on the controller, at the end ---------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _is_worker(session.config) or (stage := _stage(session.config)) is None:
        return
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(session.config.getoption("book_cache").resolve()))
    records = cache.list_cache_records()

    def forget(uri: str) -> None:  # older outputs of that notebook must not reach the build
        for record in records:
            if record.uri == uri:
                cache.remove_cache(record.pk)

    lines = []
    for failed in sorted(stage.glob("*.failed")):
        info = json.loads(failed.read_text())
        forget(info["uri"])
        lines.append(f"  FAILED  {info['seconds']:7.1f} s  {Path(info['uri']).relative_to(ROOT)}")
    passed = sorted(stage.glob("*.passed"))
    for done in passed:
        info = json.loads(done.read_text())
        forget(info["uri"])
        nb = nbformat.read(done.with_suffix(".ipynb"), as_version=4)
        bundle = CacheBundleIn(nb, info["uri"], data={"execution_seconds": info["seconds"]})
        cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
        lines.append(f"  stored  {info['seconds']:7.1f} s  {Path(info['uri']).relative_to(ROOT)}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(f"nbval_cache: {len(passed)} notebook(s) stored in {cache.path}")
        for line in lines:  # seconds from the first cell's setup (kernel start) to the last cell
            reporter.write_line(line)
