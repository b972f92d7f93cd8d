# reformer_jax: the whole set-up is `make train` or `make test` on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
GIN    ?= configs/copy.gin
WORKDIR ?= runs/copy

.PHONY: install train test test-e2e test-fast lint bench notebooks clean

install: $(STAMP)

# Re-install when the package metadata changes.
$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m reformer_jax.train --gin_file=$(GIN) --workdir=$(WORKDIR)

# The two test tiers (tests/conftest.py). `make test`, after every change: everything
# not marked slow, <= 10 minutes on a 2-core CPU with a cold compile cache. `make
# test-e2e`, before a landing: the tests marked slow (notebooks, a step of every
# shipped config, full-size memory targets, install, multi-host, kill soak, peers,
# and the tests that run a whole command: train, sample, predict, convert, the planner).
# pytest's exit status 5 (no test selected, e.g. a tier emptied by -k) is not a failure.
PYTEST := $(PY) -m pytest -q -n 2 --durations=15
test: $(STAMP)
	$(PYTEST) -m "not slow" tests || [ $$? -eq 5 ]

test-e2e: $(STAMP)
	$(PYTEST) -m slow tests || [ $$? -eq 5 ]

test-fast: test

lint: $(STAMP)
	$(VENV)/bin/ruff check reformer_jax tests scripts notebooks
	$(VENV)/bin/ruff format --check reformer_jax tests scripts notebooks

# Re-run notebooks/*.ipynb and save their outputs in place (what is committed).
# SMOKE=1 (default): the small setting, ~2 min each on a 2-core CPU; SMOKE=0: the
# real setting, for a GPU. `make test-e2e` also executes them (tests/test_notebooks.py).
SMOKE ?= 1
notebooks: $(STAMP)
	$(PY) scripts/run_notebooks.py --inplace $(if $(filter 0,$(SMOKE)),--full,)

bench: $(STAMP)
	$(PY) scripts/benchmark.py attention

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
