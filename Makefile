# Diffusion Models, Step by Step: build the book, run the tests, open the notebooks.
#   make book   execute every notebook (nbval, 2 at a time), then build the book  -> _build/html/index.html
#   make test   everything CI runs (lint, unit tests, notebooks with nbval, fast-mode book, browser test)
#   make quick  the unit tests without the `slow` ones (a couple of minutes)
#   make lab    open the notebooks in JupyterLab
# Each target creates .venv and installs what it needs on first use; later runs reuse it.
#
# Each notebook executes exactly once per run, by nbval (tests/nbval_cache.py says how):
#   1. notebooks-fast: pytest with nbval (`--nbval-lax --nbval-current-env`) runs every code cell of
#      every .ipynb chapter of _toc.yml as a test item, $(JOBS) notebooks at a time (xdist
#      `--dist loadfile`: a notebook's cells stay on one worker and its kernel), each kernel in the
#      notebook's folder with one torch thread, in fast mode; a failing cell fails pytest with
#      nbval's report (notebook, cell, traceback). The plugin tests/nbval_cache.py stores each
#      notebook that passed, with nbval's outputs, in the fast build's jupyter-cache and writes
#      _build/fast/_config.yml (_config.yml with `execute_notebooks: cache`).
#   2. book-fast builds from that config: every .ipynb page takes its outputs from the cache (the
#      step fails if the build log shows a notebook executed again). The two MyST pages with code
#      (book/intro.md, book/model_cards.md) are not notebooks nbval collects: the build executes
#      them, once, a few seconds each. Warnings are errors.
#   3. the unit tests execute no notebook (no --nbval flag: nbval collects nothing);
#      tests/test_notebooks_clean.py checks that notebooks are stored without outputs.
#      The browser test opens every page of the fast build.
# `make book` (readers) takes the same path in full mode: notebooks-full (nbval, $(JOBS) at a time,
# full mode) fills _build/.jupyter_cache, then the build reads it via _build/full/_config.yml.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HASH   := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-$(HASH)
ORACLE := $(VENV)/.oracle-$(HASH)
JOBS   ?= 2
MATHJAX_DIR := _build/.mathjax/mathjax
FAST_DIR    := _build/fast
FAST_HTML   := $(FAST_DIR)/_build/html
FAST_ENV    := DIFFUSION_TUTORIAL_FAST=1 DIFFUSION_TUTORIAL_TEXT_PROGRESS=1
FULL_DIR    := _build/full
# nbval with the cell timeout of _config.yml (execute: timeout:); tests/nbval_cache.py fills the
# build cache. `python -m` puts the repository on sys.path, so that `-p tests.nbval_cache` imports.
CELL_TIMEOUT := $(shell sed -n 's/^  timeout: *\([0-9][0-9]*\).*/\1/p' _config.yml)
# What nbval collects (of these, only the notebooks of _toc.yml), e.g. NOTEBOOKS=notebooks/part4_beyond
NOTEBOOKS ?= notebooks
NBVAL = $(BIN)/python -m pytest -p tests.nbval_cache --nbval-lax --nbval-current-env \
	--nbval-cell-timeout=$(CELL_TIMEOUT) -n $(JOBS) --dist loadfile --no-loadscope-reorder
# A build that executes an .ipynb page itself did not find it in the cache: it ran twice.
RAN_TWICE = grep -a "Executing notebook" $(1) | grep -a "\.ipynb"

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: help venv book book-fast notebooks-fast notebooks-full mathjax test lint unit quick browser lab clean

help:
	@sed -n '2,6p' Makefile

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,test]'
	rm -f $(VENV)/.installed-* && touch $@

# The tests also need the peer oracle (diffusers) that tests/test_diffusers_oracle.py compares with.
$(ORACLE): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[book,test,oracle]'
	rm -f $(VENV)/.oracle-* && touch $@

venv: $(STAMP)

# MathJax 3 from the django-static-mathjax package, copied beside the build so that math
# typesets offline. _config.yml serves it as _static/mathjax/tex-chtml.js.
mathjax: $(MATHJAX_DIR)/tex-chtml.js
$(MATHJAX_DIR)/tex-chtml.js: $(STAMP)
	rm -rf $(MATHJAX_DIR) && mkdir -p $(dir $(MATHJAX_DIR))
	cp -r "$$($(BIN)/python -c 'import mathjax, pathlib; print(pathlib.Path(mathjax.__file__).parent / "static/mathjax/es5")')" $(MATHJAX_DIR)

# Full mode: what readers get. nbval executes the notebooks ($(JOBS) at a time) into the full
# build's cache, then the build takes their outputs from it (and executes the two .md pages).
notebooks-full: $(STAMP)
	@t0=$$(date +%s); DIFFUSION_TUTORIAL_TEXT_PROGRESS=1 $(NBVAL) --book-cache _build/.jupyter_cache \
		--book-config-out $(FULL_DIR)/_config.yml $(NOTEBOOKS); \
		rc=$$?; echo "TIME notebooks, full mode (nbval, $(JOBS) at a time): $$(( $$(date +%s) - t0 )) s, status $$rc"; exit $$rc

book: notebooks-full mathjax
	@t0=$$(date +%s); DIFFUSION_TUTORIAL_TEXT_PROGRESS=1 $(BIN)/jupyter-book build . \
		--config $(FULL_DIR)/_config.yml -W -n --keep-going 2>&1 | tee $(FULL_DIR)/build.log; \
		rc=$$?; echo "TIME book build (outputs from the cache): $$(( $$(date +%s) - t0 )) s, status $$rc"; \
		if $(call RAN_TWICE,$(FULL_DIR)/build.log); then echo "ERROR: the build executed the notebooks above again"; rc=1; fi; \
		[ $$rc = 0 ] && echo "Book built: $(CURDIR)/_build/html/index.html"; exit $$rc

# Fast mode, into its own folder (and its own cache) so it never mixes with the full build.
notebooks-fast: $(STAMP)
	@t0=$$(date +%s); $(FAST_ENV) $(NBVAL) --book-cache $(FAST_DIR)/_build/.jupyter_cache \
		--book-config-out $(FAST_DIR)/_config.yml $(NOTEBOOKS); \
		rc=$$?; echo "TIME notebooks (nbval, $(JOBS) at a time): $$(( $$(date +%s) - t0 )) s, status $$rc"; exit $$rc

book-fast: notebooks-fast mathjax
	@t0=$$(date +%s); $(FAST_ENV) $(BIN)/jupyter-book build . --config $(FAST_DIR)/_config.yml \
		-W -n --keep-going --path-output $(FAST_DIR) 2>&1 | tee $(FAST_DIR)/build.log; \
		rc=$$?; echo "TIME fast-mode book build (outputs from the cache): $$(( $$(date +%s) - t0 )) s, status $$rc"; \
		if $(call RAN_TWICE,$(FAST_DIR)/build.log); then echo "ERROR: the build executed the notebooks above again"; rc=1; fi; \
		[ $$rc = 0 ] && echo "Fast-mode book built: $(CURDIR)/$(FAST_HTML)/index.html"; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Unit tests in fast mode, $(JOBS) processes (one torch thread each, see tests/conftest.py) that
# steal work from each other, so one long test file does not leave a core idle;
# prints the 15 slowest tests and the total.
unit: $(ORACLE)
	@t0=$$(date +%s); DIFFUSION_TUTORIAL_FAST=1 $(BIN)/pytest -n $(JOBS) --dist worksteal \
		--durations=15 --ignore=tests/test_browser.py tests; \
		rc=$$?; echo "TIME unit tests: $$(( $$(date +%s) - t0 )) s, status $$rc"; exit $$rc

quick: $(ORACLE)
	@t0=$$(date +%s); DIFFUSION_TUTORIAL_FAST=1 $(BIN)/pytest -n $(JOBS) --dist worksteal \
		--durations=15 -m "not slow" --ignore=tests/test_browser.py tests; \
		rc=$$?; echo "TIME unit tests without slow: $$(( $$(date +%s) - t0 )) s, status $$rc"; exit $$rc

browser: $(STAMP)
	@t0=$$(date +%s); DIFFUSION_TUTORIAL_FAST=1 BOOK_HTML=$(FAST_HTML) $(BIN)/pytest tests/test_browser.py -v; \
		rc=$$?; echo "TIME browser test: $$(( $$(date +%s) - t0 )) s, status $$rc"; exit $$rc

test: lint unit book-fast browser

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf _build
