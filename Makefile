# ft_pipeline: `make run` runs the whole pipeline on demo data, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
UI_PORT ?= 3000

.PHONY: install run lint test ui bench clean

# A virtual environment in the repo root, installed with the tested pins (constraints.txt keeps torch on its CPU build).
$(INSTALLED): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { $(PYTHON) -m pip install --user virtualenv && $(PYTHON) -m virtualenv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(INSTALLED)

install: $(INSTALLED)

run: install
	$(BIN)/ft-pipeline run --demo-if-empty

# Lint, format and type checks first: they take seconds and fail before the slow tests start.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# the webserver and daemon never import ft_pipeline: their telemetry is switched off here and in dagster.yaml
ui: install
	DAGSTER_DISABLE_TELEMETRY=true MLFLOW_DISABLE_TELEMETRY=true $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(UI_PORT)

bench: install
	$(BIN)/python bench/ingest.py --lines 200000
	$(BIN)/python bench/settlements.py --rows 200000
	$(BIN)/python bench/patterns.py --rows-per-day 300
	$(BIN)/python bench/train.py
	$(BIN)/python bench/capture.py --records 20000
	$(BIN)/python bench/segments.py --sizes 10,50,200
	$(BIN)/python bench/serve.py --requests 24 --max-tokens 16 --rounds 5
	$(BIN)/python bench/scale.py --tasks 4 --steps 30

clean:
	rm -rf $(VENV) build *.egg-info
