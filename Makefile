# The two commands of the README:  make run  (set up, run the service)  and  make test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test lint typecheck audit pytest clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/spampots demo

lint: setup
	$(BIN)/ruff check feeds taxii_server tests bench
	$(BIN)/ruff format --check feeds taxii_server tests bench

typecheck: setup
	$(BIN)/mypy

# Known vulnerabilities (PyPI's advisory data) in every installed distribution but the
# project itself: any found fails the test command. A distribution pip-audit cannot look up
# (offline, a mirror without per-version JSON) is only a warning; CI with the real PyPI runs
# `make test AUDIT_FLAGS=--strict` so that an unaudited dependency fails too. No
# vulnerability is ignored (--ignore-vuln): add one only with a comment saying why.
AUDIT_FLAGS ?=
audit: setup
	$(BIN)/pip-audit --progress-spinner off --skip-editable $(AUDIT_FLAGS)

pytest: setup
	$(BIN)/pytest

test: lint typecheck audit pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
