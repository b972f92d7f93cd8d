# reformer_jax: the whole set-up is `make train` or `make test` on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
GIN    ?= configs/copy.gin
WORKDIR ?= runs/copy

.PHONY: install train test test-fast lint bench notebooks clean

install: $(STAMP)

# Re-install when the package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m reformer_jax.train --gin_file=$(GIN) --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 tests

# Everything but the tests marked slow (notebooks, every shipped config, multi-host,
# install, kill-soak, full-size memory plans): a few minutes on a 2-core CPU.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10 -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check reformer_jax tests scripts notebooks
	$(VENV)/bin/ruff format --check reformer_jax tests scripts notebooks

# Re-run notebooks/*.ipynb and save their outputs in place (what is committed).
# SMOKE=1 (default): the small setting, ~2 min each on a 2-core CPU; SMOKE=0: the
# real setting, for a GPU. `make test` also executes them (tests/test_notebooks.py).
SMOKE ?= 1
notebooks: $(STAMP)
	$(PY) scripts/run_notebooks.py --inplace $(if $(filter 0,$(SMOKE)),--full,)

bench: $(STAMP)
	$(PY) scripts/benchmark.py attention

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
