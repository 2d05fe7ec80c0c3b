"""Execute every notebook of the book once, a few at a time, into a Jupyter Book build cache.

`make test` runs this before its fast-mode book build. The notebooks listed in _toc.yml are executed
in parallel (``--jobs`` kernels, each with its share of the CPU threads), exactly as the book build
would execute them (jupyter-cache's ``single_nb_execution``: notebook folder as working directory,
the timeout of _config.yml, no errors allowed). Each executed notebook is stored in the jupyter-cache
folder that the build reads, and a copy of _config.yml with ``execute_notebooks: cache`` is written
for that build, so the build takes every output from the cache and executes nothing a second time.
MyST text notebooks (.md pages with a kernel, e.g. book/intro.md) are read with MyST-NB's own reader,
so that their cache entries match too.

Usage (the Makefile's `test` target):
    python scripts/execute_notebooks.py --jobs 2 --cache _build/fast/_build/.jupyter_cache \
        --config-out _build/fast/_config.yml

Exits with status 1, after printing each traceback and writing it to ``<reports>/<name>.err.log``,
when a notebook fails. `make book` (what readers run) does not use this: it executes every notebook.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nbformat
import yaml
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from jupyter_cache.executors.utils import single_nb_execution
from myst_nb.core.read import is_myst_markdown_notebook, read_myst_markdown_notebook
from myst_parser.config.main import MdParserConfig

ROOT = Path(__file__).resolve().parent.parent


def toc_notebooks(toc_path: Path) -> list[Path]:
    """The pages named in _toc.yml that the build executes (.ipynb, MyST .md notebooks), in order."""
    toc = yaml.safe_load(toc_path.read_text())
    names = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    pages = []
    for name in names:
        if (path := ROOT / f"{name}.ipynb").exists():
            pages.append(path)
        elif (path := ROOT / f"{name}.md").exists() and is_myst_markdown_notebook(path.read_text()):
            pages.append(path)
    return pages


def read_notebook(path: Path, extensions: list[str]) -> nbformat.NotebookNode:
    """The notebook the build reads from ``path`` (MyST-NB's own reader for .md pages)."""
    if path.suffix == ".md":
        config = MdParserConfig(enable_extensions=set(extensions))
        return read_myst_markdown_notebook(path.read_text(), config=config, path=path)
    return nbformat.read(path, as_version=4)


def execute(
    path: Path, timeout: int, extensions: list[str]
) -> tuple[Path, nbformat.NotebookNode, float, str | None]:
    """Run one notebook in its own folder; return it with outputs, its seconds and any traceback."""
    nb = read_notebook(path, extensions)
    start = time.perf_counter()
    try:
        result = single_nb_execution(
            nb, cwd=str(path.parent), timeout=timeout, allow_errors=False, meta_override=True
        )
    except Exception:  # a dead kernel or a kernel that never started: report it like a cell error
        return path, nb, time.perf_counter() - start, traceback.format_exc()
    error = None if result.err is None else (result.exc_string or repr(result.err))
    return path, result.nb, result.time, error


def fast_build_config(config: dict, cache: Path) -> dict:
    """A copy of the book config whose build takes every output from ``cache``."""
    config = copy.deepcopy(config)
    config["execute"]["execute_notebooks"] = "cache"
    config["execute"]["cache"] = str(cache.resolve())
    # Jupyter Book resolves local extension folders against the config file's folder.
    local = config.get("sphinx", {}).get("local_extensions") or {}
    for name, folder in local.items():
        local[name] = str((ROOT / folder).resolve())
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="notebooks executed at once (>= 1)")
    parser.add_argument("--cache", type=Path, required=True, help="jupyter-cache folder to fill")
    parser.add_argument("--config-out", type=Path, required=True, help="build config to write")
    parser.add_argument("--reports", type=Path, default=None, help="folder for *.err.log files")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    # 1. The build config: _config.yml, but outputs come from the cache filled below.
    config = fast_build_config(yaml.safe_load((ROOT / "_config.yml").read_text()), args.cache)
    args.config_out.parent.mkdir(parents=True, exist_ok=True)
    args.config_out.write_text(
        "# Written by scripts/execute_notebooks.py from _config.yml; do not edit.\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    )

    # 2. Each kernel gets its share of the cores, so that `jobs` kernels do not oversubscribe them.
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))

    # 3. Execute in parallel; store each success in the cache as it finishes.
    notebooks = toc_notebooks(ROOT / "_toc.yml")
    cache = get_cache(str(args.cache))
    reports = args.reports or args.cache.parent / "reports"
    timeout = int(config["execute"]["timeout"])
    extensions = config.get("parse", {}).get("myst_enable_extensions", [])
    print(f"executing {len(notebooks)} notebooks, {args.jobs} at a time, {threads} thread(s) each")
    start = time.perf_counter()
    times: dict[Path, float] = {}
    failed: list[Path] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(execute, path, timeout, extensions) for path in notebooks]
        for future in as_completed(futures):
            path, nb, seconds, error = future.result()
            name = path.relative_to(ROOT)
            times[path] = seconds
            if error is None:
                cache.cache_notebook_bundle(
                    CacheBundleIn(nb, str(path), data={"execution_seconds": seconds}),
                    check_validity=False,
                    overwrite=True,
                )
                print(f"  {seconds:7.1f} s  {name}", flush=True)
            else:
                failed.append(path)
                reports.mkdir(parents=True, exist_ok=True)
                (reports / f"{path.stem}.err.log").write_text(error)
                tail = "\n".join(error.splitlines()[-40:])  # the full traceback is in the report
                print(
                    f"  FAILED after {seconds:.1f} s: {name}\n{tail}", file=sys.stderr, flush=True
                )

    # 4. Timings: the sum is what a serial build would spend executing.
    wall = time.perf_counter() - start
    print(
        f"executed {len(notebooks)} notebooks in {wall:.1f} s wall "
        f"(sum of notebook times {sum(times.values()):.1f} s)"
    )
    if failed:
        print(f"{len(failed)} notebook(s) failed: {[str(p.relative_to(ROOT)) for p in failed]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
