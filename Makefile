# The two set-up commands of the README. Both create .venv from nothing and install the project
# into it with a plain (non-editable) pip install, as a user would.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATE := 2026-12-04

.PHONY: demo test venv lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet ".[test]"

demo: venv
	scripts/demo.sh "$(BIN)" "$(DEMO_DATE)"

test: venv
	scripts/debian-packages.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/python -m pip install --quiet ".[dev]"
	$(BIN)/ruff check agent reporter tests
	$(BIN)/mypy agent reporter

clean:
	rm -rf demo-output build *.egg-info
