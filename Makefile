# The commands a person types. `make run` and `make test` set up whatever is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
PREFECT_PORT ?= 4200
# pytest workers of `make test` (pytest-xdist; 0: the tests run in pytest's own process). Two keep both cores
# busy: one process alone leaves a core idle most of the time, because most of an end-to-end test is a stage
# process importing torch, MLflow and GX on one thread. tests/conftest.py gives each worker one torch thread and
# says in which order the files are handed out.
TEST_WORKERS ?= 2
# The parts of the team stack `make stack-down` stops (empty: all of them), e.g. SERVICES=mlflow to restart one.
SERVICES ?=

# No telemetry from any tool we drive.
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help setup data run test test-fast test-stack lint format ui prefect-server serve deploy stack stack-down \
	stack-status clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,stack]'
	touch $@

setup: $(STAMP) data  ## create .venv (pip, locked versions) and get the default data

data: $(STAMP)  ## make data/ match data.dvc (local cache, DVC remote, or Fashion-MNIST + scikit-learn digits, verified)
	@bash scripts/setup_data.sh

run: setup  ## run the pipeline on the default data (dvc repro under the project lock), then print the results table
	sslops repro
	sslops report

test: setup  ## run the whole test suite, end-to-end tests included (the team stack's: make test-stack)
	pytest -m "not stack" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-stack: setup  ## the team setup: the stack (two clones, a worker, faults, the UIs in Chromium), a served deployment, two nodes (needs Debian's postgresql, chromium)
	pytest -m stack

test-fast: $(STAMP)  ## unit tests only: no real MLflow, GX, DVC or Prefect (under 2 minutes)
	pytest -m "not integration and not slow"

lint: $(STAMP)  ## ruff: lint and format check (pyproject.toml, line length 120)
	ruff check .
	ruff format --check .

format: $(STAMP)  ## ruff: fix what can be fixed and format the tree
	ruff check --fix .
	ruff format .

ui: $(STAMP)  ## open the MLflow UI on http://$(HOST):$(MLFLOW_PORT)
	@echo "the runs: http://$(HOST):$(MLFLOW_PORT)/#/experiments/1/runs?workflowType=machine_learning"
	mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow/mlflow.db" --host $(HOST) --port $(MLFLOW_PORT)

prefect-server: $(STAMP)  ## start a local Prefect server and UI on http://$(HOST):$(PREFECT_PORT) (SQLite in .prefect/)
	# The UI finds its API through these settings, not through --port: without them it calls port 4200.
	PREFECT_HOME="$(CURDIR)/.prefect" PREFECT_SERVER_API_HOST=$(HOST) PREFECT_SERVER_API_PORT=$(PREFECT_PORT) \
	PREFECT_UI_API_URL="http://$(HOST):$(PREFECT_PORT)/api" prefect server start --host $(HOST) --port $(PREFECT_PORT)

serve: setup  ## serve the Prefect deployment ssl-pipeline/scheduled (schedule: flow.cron in params.yaml)
	PREFECT_API_URL="$${PREFECT_API_URL:-http://$(HOST):$(PREFECT_PORT)/api}" python flows/ssl_pipeline.py

deploy: setup  ## register deployment ssl-pipeline/pool on work pool flow.work_pool (for its workers; see make stack)
	python flows/ssl_pipeline.py deploy

stack: $(STAMP)  ## start the team stack on this machine: PostgreSQL, MLflow (auth), Prefect (auth, pool, worker), DVC remote
	python scripts/stack.py up

stack-down:  ## stop the team stack's processes, or only SERVICES="mlflow ..." (its data stays in .stack/)
	python scripts/stack.py down $(SERVICES)

stack-status:  ## which parts of the team stack are running
	python scripts/stack.py status

clean:  ## remove stage outputs (`dvc checkout` restores artifacts from the DVC cache, `git checkout metrics` the metrics)
	rm -rf artifacts metrics
