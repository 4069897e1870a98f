# The course's workflows. The two that matter most:
#   make book   - install (first time), execute every chapter, build the HTML book
#   make test   - install (first time), run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extra pip flags for torch, e.g. a CPU wheel index on a laptop:
#   make book TORCH_PIP_FLAGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_FLAGS ?=

.PHONY: install base sft book check-book test test-fast release lint bench bench-cluster clean help

help:
	@echo "make book     build the HTML book into _build/html (installs first if needed)"
	@echo "make test     run the test suite (installs first if needed)"
	@echo "make check-book  open every built page in headless Chromium: images, math, errors, console, widgets, links"
	@echo "make release  regenerate exercises/ from solutions/"
	@echo "make base     re-train the shipped base model and tokenizer (src/llmcourse/checkpoints/base)"
	@echo "make sft      re-make the shipped SFT model from the base model (src/llmcourse/checkpoints/sft)"
	@echo "make lint     ruff over the library, autograder and tests"
	@echo "make bench    measure build and grading times into benchmarks/results/"
	@echo "make bench-cluster  local pool vs Dask cluster on 40 submissions (about 10 minutes)"

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet $(TORCH_PIP_FLAGS) "torch==2.13.0"
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[all]"
	$(PY) -m llmcourse.doctor
	@touch $(STAMP)

book: $(STAMP)
	LLMCOURSE_BOOK_BUILD=1 JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
		$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo; echo "Book built. Open: file://$(CURDIR)/_build/html/index.html"

# Needs Debian's chromium and chromium-driver (.ci/run installs them); screenshots go to _build/check-book/.
check-book: $(STAMP)
	$(PY) -m tools.check_book _build/html --out _build/check-book

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

base: $(STAMP)
	$(PY) -m llmcourse.recipes.base

sft: $(STAMP)
	$(PY) -m llmcourse.recipes.sft

release: $(STAMP)
	$(PY) -m autograder release

lint: $(STAMP)
	$(VENV)/bin/ruff check src autograder tests benchmarks tools

bench: $(STAMP)
	$(PY) benchmarks/bench_book.py
	$(PY) benchmarks/bench_grading.py
	$(PY) benchmarks/bench_batch.py
	$(PY) benchmarks/bench_trainer.py

bench-cluster: $(STAMP)
	$(PY) benchmarks/bench_cluster.py

clean:
	rm -rf _build
