# The two commands of the README: `make demo` and `make test`; `make ui` after the demo. Each creates
# .venv on first use and reinstalls it when pyproject.toml changes. `make check` runs the linters and type checker.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: demo ui test check benchmark lock
demo: $(INSTALLED)
	$(VENV)/bin/ftp-assets demo

# What the demo leaves, in the browser: the Dagster UI with its daemon, the MLflow UI, the local service.
ui: $(INSTALLED)
	$(VENV)/bin/ftp-assets ui

test: $(INSTALLED)
	$(VENV)/bin/pytest

check: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .
	$(VENV)/bin/hadolint deploy/Dockerfile deploy/trainer.Dockerfile deploy/serving.Dockerfile

benchmark: $(INSTALLED)
	$(VENV)/bin/python benchmarks/run_all.py

# deploy/requirements.lock: the image's dependencies (the product's and the `s3` extra's, plus the
# build backend) pinned with their hashes, for the image's Python 3.11 on linux/amd64.
lock: $(INSTALLED)
	$(VENV)/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	| $(VENV)/bin/uv pip compile pyproject.toml - --extra s3 --generate-hashes --only-binary :all: \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    --custom-compile-command "make lock" --quiet -o deploy/requirements.lock

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@
