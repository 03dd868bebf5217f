# make run   - set up .venv on first use, then run the default correction job
# make test  - set up .venv on first use, then lint (ruff) and run the test suite
# make bench - set up .venv on first use, then run the speed benchmark
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: setup run lint test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,ray]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m xilsweep.run $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# -n auto: one test worker per core, each taking whole test files (a file's tests share its services),
# in collection order (tests/conftest.py puts the files that wait on services first)
test: lint
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder $(ARGS)

bench: $(STAMP)
	$(PY) bench/speed.py $(ARGS)

clean:
	rm -rf outputs data/08MNIST data/DecoyMNIST
