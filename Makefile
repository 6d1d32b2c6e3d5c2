# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.veil-installed
PYTEST_ARGS ?=

.PHONY: demo test test-all lint bench docs notebooks setup clean

$(STAMP): pyproject.toml requirements/crypten.txt requirements/torch-cpu.txt tools/bootstrap.sh tools/check_env.py
	bash tools/bootstrap.sh
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/veil demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/lint-imports

# Default suite: fast tests plus real multi-process MPC runs; `slow` ones go with test-all.
test: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# pytest-benchmark suites (benchmarks/bench_*.py); each file can also be run as a script that
# prints its side-by-side table. Not part of `make test`.
bench: $(STAMP)
	$(PY) -m pytest benchmarks -o python_files='bench_*.py' --benchmark-only \
		--benchmark-columns=min,median,iqr,ops $(PYTEST_ARGS)

# API reference from the docstrings (docs/api); tests/test_docs.py checks it is current.
docs: $(STAMP)
	$(PY) tools/apidoc.py docs/api

# Re-execute the tutorial notebooks and store their outputs and plots (commit the result);
# tests/test_notebooks.py fails when a notebook's code changed since its outputs were stored.
notebooks: $(STAMP)
	$(PY) tools/run_notebooks.py

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks build src/*.egg-info
