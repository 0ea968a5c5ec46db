# `make test` and `make demo` work on a fresh clone: they create .venv, install the
# CPU build of torch that lies on this machine's disk (so pip never pulls the multi-GB
# CUDA build), then the package with its dev and docs extras, and sbibm without its
# dependencies (its data files only). `make test` runs the
# tests, then builds the documentation (warnings are errors).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_WHEEL ?= $(wildcard /opt/wheels/torch-2.13.0+cpu-cp311-*.whl)

.PHONY: install test test-fast docs demo lint format bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH_WHEEL)" ]; then $(PY) -m pip install -q "$(TORCH_WHEEL)"; \
	else $(PY) -m pip install -q "torch>=2.1,<=2.14.1" --index-url https://download.pytorch.org/whl/cpu; fi
	$(PY) -m pip install -q -e ".[dev,docs]"
	# sbibm's stored observations and reference posteriors (Table 2, tests/models/
	# test_sbibm_files.py); --no-deps: only its data files are read, none of its code
	$(PY) -m pip install -q --no-deps sbibm
	touch $@

install: $(VENV)/.installed

# two workers, one per core (the tests use one torch thread each); the slow accuracy fits
# are scheduled first (tests/conftest.py) so none of them runs alone at the end
test: $(VENV)/.installed lint
	MPLBACKEND=Agg $(PY) -m pytest -q -n 2 tests
	$(MAKE) docs

# everything but the accuracy fits marked `slow`: a quick check while editing
test-fast: $(VENV)/.installed
	MPLBACKEND=Agg $(PY) -m pytest -q -n 2 -m "not slow" tests

# the site into docs/_build/html; the tutorials run the examples in their quick mode
docs: $(VENV)/.installed
	MPLBACKEND=Agg $(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

demo: $(VENV)/.installed
	MPLBACKEND=Agg $(PY) examples/exponential_posterior.py

lint: $(VENV)/.installed
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: $(VENV)/.installed
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

bench: $(VENV)/.installed
	MPLBACKEND=Agg $(PY) -m benchmarks --suite full

bench-quick: $(VENV)/.installed
	MPLBACKEND=Agg $(PY) -m benchmarks --suite quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache docs/_build docs/api docs/tutorials/_generated
