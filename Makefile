# Diffusion Models, Step by Step: build the book, run the tests, open the notebooks.
#   make book   build the whole book, executing every notebook  -> _build/html/index.html
#   make test   everything CI runs (lint, unit tests, notebooks, fast-mode book, browser test)
#   make quick  the unit tests without the `slow` ones (a couple of minutes)
#   make lab    open the notebooks in JupyterLab
# Each target creates .venv and installs what it needs on first use; later runs reuse it.
#
# How `make test` executes each notebook exactly once:
#   1. scripts/execute_notebooks.py runs every page of _toc.yml that has code (.ipynb chapters and
#      MyST .md notebooks), $(JOBS) kernels at a time, in fast mode, and stores the executed
#      notebooks in the fast build's jupyter-cache; a cell that raises fails here, traceback shown.
#   2. book-fast builds from _build/fast/_config.yml, which is _config.yml with
#      `execute_notebooks: cache`: every page takes its outputs from that cache (warnings are
#      errors, so a page that somehow had to execute again and failed still fails the build).
#   3. the unit tests execute no notebook; tests/test_notebooks_clean.py checks that notebooks
#      are stored without outputs. The browser test opens the pages of that fast build.
# `make book` (readers, the published site) keeps _config.yml's `execute_notebooks: force`.

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

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: help venv book book-fast notebooks-fast mathjax test lint unit quick browser lab clean

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

# Full mode: what readers get. Every notebook is executed by the build itself.
book: $(STAMP) mathjax
	DIFFUSION_TUTORIAL_TEXT_PROGRESS=1 $(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Book built: $(CURDIR)/_build/html/index.html"

# Fast mode, into its own folder (and its own cache) so it never mixes with the full build.
notebooks-fast: $(STAMP)
	@t0=$$(date +%s); $(FAST_ENV) $(BIN)/python scripts/execute_notebooks.py --jobs $(JOBS) \
		--cache $(FAST_DIR)/_build/.jupyter_cache --config-out $(FAST_DIR)/_config.yml \
		--reports $(FAST_DIR)/reports; \
		rc=$$?; echo "TIME notebooks (executed once, $(JOBS) at a time): $$(( $$(date +%s) - t0 )) s, status $$rc"; exit $$rc

# The build log names any page the build had to execute itself (its cache entry did not match).
book-fast: notebooks-fast mathjax
	@t0=$$(date +%s); $(FAST_ENV) $(BIN)/jupyter-book build . --config $(FAST_DIR)/_config.yml \
		-W -n --keep-going --path-output $(FAST_DIR) 2>&1 | tee $(FAST_DIR)/build.log; \
		rc=$$?; echo "TIME fast-mode book build (outputs from the cache): $$(( $$(date +%s) - t0 )) s, status $$rc"; \
		! grep -a "Executing notebook" $(FAST_DIR)/build.log \
		|| echo "NOTE: the build executed the pages above a second time (not found in the cache)"; \
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
