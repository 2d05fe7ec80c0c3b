"""Browser test of the built book: every page in _toc.yml, opened in the system Chromium.

Checks on each page: math typeset by the local MathJax (no raw TeX left, no display equation wider
than the content column at 1280 px), every image loaded, no error output or traceback in any cell,
every internal link resolves, and Colab/Binder launch links on notebook pages. All requests that
leave 127.0.0.1 are blocked, so the pages must work offline. Screenshots of the top of each page
(4,000 pixels) go to _build/screenshots/. Every page is visited once, four at a time, by one
Chromium (one browser context per page); the tests read the results.

Checks of the built HTML itself (no browser needed): equation numbers carry their chapter's number,
a reference to an equation shows the number printed at that equation, and the API reference has a
section for every module of the package.

Needs the built book (BOOK_HTML, default _build/html) and Chromium driven by Playwright for Python
with ``executable_path`` (no browser is ever downloaded). Skips without them, except under CI=true,
where a missing browser or book fails.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.conftest import ROOT
from tests.test_book_config import REPO_URL, TOC, toc_files

IN_CI = os.environ.get("CI", "").lower() == "true"
HTML = (ROOT / os.environ.get("BOOK_HTML", "_build/html")).resolve()
SHOTS = ROOT / "_build" / "screenshots"
# Pages render in a 1280 x SHOT_HEIGHT window, and the screenshot is the top of the page in that
# window: a full-page screenshot would lay each page out a second time at its full height (over
# 60,000 pixels for the API reference), the largest cost of this test on two cores.
SHOT_HEIGHT = 4_000  # pixels


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (required when CI=true)")
    pytest.skip(reason)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        _missing(f"the book is not built at {HTML} (run `make book-fast`)")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output readable
            pass

    handler = functools.partial(QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _launch_args() -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]


PAGES = toc_files()


def _is_notebook(name: str) -> bool:
    return (ROOT / f"{name}.ipynb").exists()


# Evaluated in the page once MathJax has finished.
PAGE_REPORT_JS = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const main = document.querySelector('main') || document.body;
  const text = main.innerText;
  const imgs = Array.from(document.images).filter(i => !i.closest('.header-article'));
  return {
    mathSource: document.querySelectorAll('.math').length,
    mathTypeset: document.querySelectorAll('mjx-container').length,
    mathjaxLoaded: !!(window.MathJax && MathJax.version),
    rawTeX: /\\\\\\(|\\\\\\[|\\$\\$/.test(text),
    brokenImages: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80)),
    outputImages: document.querySelectorAll('.cell_output img').length,
    tracebacks: Array.from(document.querySelectorAll('.output.traceback, .output.error')).length,
    errorText: /Traceback \\(most recent call last\\)|\\w+Error: |\\w*Warning: /.test(
      Array.from(document.querySelectorAll('.cell_output')).map(e => e.innerText).join('\\n')),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
    // Display equations wider than the content column (cut off or scrolling at 1280 px).
    // MathJax 3 CHTML puts each display equation in mjx-container[display="true"]; Sphinx wraps
    // it, with the equation number, in div.math (whose id is the label, e.g.
    // "equation-eq-ddim-cond"). Either box overflowing means the reader loses the end of the line;
    // the + 1 absorbs sub-pixel rounding.
    wideEquations: Array.from(document.querySelectorAll('mjx-container[display="true"]'))
      .filter((m) => {
        const box = m.closest('div.math') || m;
        return m.scrollWidth > m.clientWidth + 1 || box.scrollWidth > box.clientWidth + 1;
      })
      .map((m) => {
        const box = m.closest('div.math') || m;
        return (box.id || '(no label)') + ': ' + (m.textContent || '').slice(0, 40);
      }),
  };
}
"""


def _expected_figures(name: str) -> int:
    """Code cells in the page's source that end in ``plt.show()``: each must render an image."""
    for ext in (".ipynb", ".md"):
        path = ROOT / f"{name}{ext}"
        if path.exists():
            return path.read_text().count("plt.show()")
    return 0


@functools.cache
def _html_text(path: Path) -> str:
    """A built page's HTML, read once however many links point into it."""
    return path.read_text(errors="replace")


def _check_internal_links(page_path: Path, links: list[str], ids: list[str]) -> list[str]:
    bad = []
    for href in links:
        url = urlparse(href)
        if url.scheme or href.startswith(("//", "mailto:", "javascript:")):
            continue
        target = (page_path.parent / unquote(url.path)).resolve() if url.path else page_path
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            bad.append(f"{href} -> missing file")
            continue
        frag = unquote(url.fragment)
        if frag and target.suffix == ".html":
            if target == page_path:
                found = frag in ids
            else:
                found = f'id="{frag}"' in _html_text(target)
            if not found:
                bad.append(f"{href} -> no anchor #{frag}")
    return bad


PARALLEL_PAGES = 4  # pages open at once, one browser context each


async def _visit(browser, server: str, name: str) -> dict:
    """Open one page in its own context; return its report, screenshot taken."""
    context = await browser.new_context(viewport={"width": 1280, "height": SHOT_HEIGHT})
    try:
        page = await context.new_page()
        outside: list[str] = []

        async def route(r):
            host = urlparse(r.request.url).hostname
            if host in ("127.0.0.1", None) or r.request.url.startswith("data:"):
                await r.continue_()
            else:
                outside.append(r.request.url)
                await r.abort()

        await page.route("**/*", route)
        console_errors: list[str] = []
        page.on("pageerror", lambda err: console_errors.append(str(err)))
        await page.goto(f"{server}/{name}.html", wait_until="load")
        report = await page.evaluate(PAGE_REPORT_JS)
        height = min(await page.evaluate("document.documentElement.scrollHeight"), SHOT_HEIGHT)
        clip = {"x": 0, "y": 0, "width": 1280, "height": height}
        shot = SHOTS / f"{name.replace('/', '__')}.png"
        await page.screenshot(path=str(shot), clip=clip)
        report["consoleErrors"] = console_errors
        report["outside"] = outside
        return report
    finally:
        await context.close()


async def _visit_all(executable: str, server: str, names: list[str]) -> dict[str, dict]:
    """Every page once, PARALLEL_PAGES at a time in one Chromium; a page that could not be
    visited maps to {"error": ...}, which its test reports."""
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    limit = asyncio.Semaphore(PARALLEL_PAGES)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=_launch_args())

        async def one(name: str) -> tuple[str, dict]:
            async with limit:
                try:
                    return name, await _visit(browser, server, name)
                except Exception as err:  # reported by that page's test, the others still run
                    return name, {"error": f"{type(err).__name__}: {err}"}

        try:
            results = await asyncio.gather(*(one(name) for name in names))
        finally:
            await browser.close()
    return dict(results)


@pytest.fixture(scope="module")
def page_reports(server) -> dict[str, dict]:
    """What the browser saw on each page of _toc.yml, all visited once (see _visit_all)."""
    executable = _chromium()
    if executable is None:
        _missing("no system Chromium found (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _missing("playwright for Python is not installed")
    names = [name for name in PAGES if (HTML / f"{name}.html").exists()]
    return asyncio.run(_visit_all(executable, server, names))


@pytest.mark.parametrize("name", PAGES)
def test_page(page_reports, name):
    page_path = HTML / f"{name}.html"
    assert page_path.exists(), f"{name}.html was not built"
    report = page_reports[name]
    assert "error" not in report, f"the page could not be visited: {report.get('error')}"
    # Requests that leave 127.0.0.1 were blocked; the checks below show what broke without them.

    if report["mathSource"]:
        assert report["mathjaxLoaded"], "MathJax did not load from the local copy"
        assert report["mathTypeset"] >= report["mathSource"], (
            f"{report['mathSource']} math elements but {report['mathTypeset']} typeset"
        )
    assert not report["rawTeX"], "raw TeX delimiters left in the page text"
    # Display equations must fit the content column at the 1280-px width of _visit: a long
    # equation is broken with aligned/split instead of scrolling sideways (issue 24, section 4).
    assert not report["wideEquations"], (
        f"{len(report['wideEquations'])} display equations wider than the column: "
        f"{report['wideEquations']}"
    )
    assert not report["brokenImages"], f"images that did not load: {report['brokenImages']}"
    # A figure that never reached the page (e.g. a non-inline matplotlib backend) is no broken
    # image: count the rendered outputs against the cells that show a figure.
    expected = _expected_figures(name)
    assert report["outputImages"] >= expected, (
        f"{expected} cells call plt.show() but only {report['outputImages']} images were rendered"
    )
    assert report["tracebacks"] == 0 and not report["errorText"], "error output in a cell"
    # sphinx-thebe 0.3 registers its config script twice under Jupyter Book 1, which redeclares a
    # constant; thebe (live code cells) is not used by this book, so that one error is harmless.
    console_errors = [e for e in report["consoleErrors"] if "THEBE_JS_URL" not in e]
    assert not console_errors, f"JavaScript errors: {console_errors}"
    bad = _check_internal_links(page_path, report["links"], report["ids"])
    assert not bad, f"broken internal links: {bad}"
    if _is_notebook(name):
        links = report["links"]
        colab = [h for h in links if "colab.research.google.com" in h]
        binder = [h for h in links if "mybinder.org" in h]
        assert colab and binder, "notebook page lacks Colab/Binder launch links"
        repo_path = urlparse(REPO_URL).path.strip("/")
        assert all(repo_path in h for h in colab + binder), (
            "launch links point at another repository"
        )


# --- Checks of the built HTML (no browser) ------------------------------------------------------


def _built(name: str) -> str:
    path = HTML / f"{name}.html"
    if not path.exists():
        _missing(f"{name}.html is not built at {HTML} (run `make book-fast`)")
    return path.read_text(errors="replace")


def chapter_numbers() -> dict[str, int]:
    """Chapter number of each page in a ``numbered: true`` part of _toc.yml, counted across parts
    (Jupyter Book's multi-toc numbering: Part 2 continues where Part 1 stopped)."""
    numbers: dict[str, int] = {}
    for part in TOC.get("parts", []):
        if part.get("numbered"):
            for entry in part.get("chapters", []):
                numbers[entry["file"]] = len(numbers) + 1
    return numbers


CHAPTERS = chapter_numbers()
EQNO = re.compile(r'<span class="eqno">\(([^)<]*)\)')
EQREF = re.compile(
    r'<a class="reference internal" href="([^"#]*)#(equation-[^"]+)">\(([^)<]*)\)</a>'
)


def test_part_1_chapters_are_numbered_like_their_files():
    """Chapter n of Part 1 is the notebook 0n_*: the text says "chapter 4" for 04_elbo."""
    part1 = [n for n in CHAPTERS if n.startswith("notebooks/part1_background/")]
    assert part1, "no numbered Part 1 chapters in _toc.yml"
    for name in part1:
        assert CHAPTERS[name] == int(Path(name).name[:2]), (name, CHAPTERS[name])


@pytest.mark.parametrize("name", PAGES)
def test_equation_numbers_carry_the_chapter(name):
    numbers = EQNO.findall(_built(name))
    chapter = CHAPTERS.get(name)
    if chapter is None:
        # An unnumbered page would print bare (1), (2), ... beside the book's (c.k) numbers.
        assert not numbers, (
            f"numbered equations {numbers} on a page outside the numbered parts: put the page in a "
            "part with `numbered: true` in _toc.yml, or drop the equation labels"
        )
    else:
        assert numbers == [f"{chapter}.{k}" for k in range(1, len(numbers) + 1)]


@pytest.mark.parametrize("name", PAGES)
def test_equation_references_show_the_cited_number(name):
    """Every {eq} reference, in its own chapter or another, reads as the number at the equation."""
    page = HTML / f"{name}.html"
    bad = []
    for href, anchor, shown in EQREF.findall(_built(name)):
        target = (page.parent / unquote(href)).resolve() if href else page
        html = target.read_text(errors="replace") if target.exists() else ""
        m = re.search(rf'id="{re.escape(anchor)}">\s*<span class="eqno">\(([^)<]*)\)', html)
        if m is None or m.group(1) != shown:
            bad.append(f"{href}#{anchor} shows ({shown}), the equation is {m and m.group(1)}")
    assert not bad, bad


def package_modules() -> list[str]:
    """Every module of the package (not the packages' __init__), as a dotted name."""
    modules = []
    for path in sorted((ROOT / "diffusion_tutorial").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        # train.py only re-exports training.cli.main for `python -m diffusion_tutorial.train`.
        if path.name not in ("__init__.py", "__main__.py") and name != "diffusion_tutorial.train":
            modules.append(name)
    return modules


def test_api_reference_documents_every_module():
    html = _built("book/api")
    missing = [m for m in package_modules() if f'id="module-{m}"' not in html]
    assert not missing, f"modules without a section in book/api.md: {missing}"
    # autodoc found the members: every module section documents at least one object.
    assert html.count('<dt class="sig sig-object py"') >= len(package_modules())
