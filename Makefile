# Diffusion Models, Step by Step: build the book, run the tests, open the notebooks.
#   make book   build the whole book, executing every notebook  -> _build/html/index.html
#   make test   everything CI runs (lint, unit tests, notebooks, fast-mode book, browser test)
#   make lab    open the notebooks in JupyterLab
# Each target creates .venv and installs what it needs on first use; later runs reuse it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
JOBS   ?= 2
MATHJAX_DIR := _build/.mathjax/mathjax
FAST_HTML   := _build/fast/_build/html

.PHONY: help venv book book-fast mathjax test lint unit lab clean

help:
	@sed -n '2,5p' Makefile

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,test]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# MathJax 3 from the django-static-mathjax package, copied beside the build so that math
# typesets offline. _config.yml serves it as _static/mathjax/tex-chtml.js.
mathjax: $(MATHJAX_DIR)/tex-chtml.js
$(MATHJAX_DIR)/tex-chtml.js: $(STAMP)
	rm -rf $(MATHJAX_DIR) && mkdir -p $(dir $(MATHJAX_DIR))
	cp -r "$$($(BIN)/python -c 'import mathjax, pathlib; print(pathlib.Path(mathjax.__file__).parent / "static/mathjax/es5")')" $(MATHJAX_DIR)

# Full mode: what readers get.
book: $(STAMP) mathjax
	DIFFUSION_TUTORIAL_TEXT_PROGRESS=1 $(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Book built: $(CURDIR)/_build/html/index.html"

# Fast mode, into its own folder so it never mixes with the full build.
book-fast: $(STAMP) mathjax
	DIFFUSION_TUTORIAL_FAST=1 DIFFUSION_TUTORIAL_TEXT_PROGRESS=1 $(BIN)/jupyter-book build . -W -n --keep-going --path-output _build/fast
	@echo "Fast-mode book built: $(CURDIR)/$(FAST_HTML)/index.html"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Unit tests and every notebook (nbval), in fast mode, two processes.
unit: $(STAMP)
	DIFFUSION_TUTORIAL_FAST=1 $(BIN)/pytest -n $(JOBS) --dist loadfile --nbval-lax --nbval-current-env \
		--ignore=tests/test_browser.py tests notebooks

test: lint unit book-fast
	DIFFUSION_TUTORIAL_FAST=1 BOOK_HTML=$(FAST_HTML) $(BIN)/pytest tests/test_browser.py -v

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf _build
