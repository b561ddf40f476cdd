# The two commands of the README: `make demo` and `make test`. Both create .venv on first use
# and reinstall it when pyproject.toml changes. `make check` runs the linters and type checker.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: demo test check benchmark
demo: $(INSTALLED)
	$(VENV)/bin/ftp demo

test: $(INSTALLED)
	$(VENV)/bin/pytest

check: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .

benchmark: $(INSTALLED)
	$(VENV)/bin/python benchmarks/run_all.py

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@
