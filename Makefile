# The commands a person types. `make run` and `make test` set up whatever is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ASSETS := vendor/datadocs/node_modules/.package-lock.json
HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
PREFECT_PORT ?= 4200
# pytest workers of `make test` (pytest-xdist; 0: the tests run in pytest's own process). Two keep both cores
# busy: one process alone leaves a core idle most of the time, because most of an end-to-end test is a stage
# process importing torch, MLflow and GX on one thread. tests/conftest.py gives each worker one torch thread and
# says in which order the files are handed out.
TEST_WORKERS ?= 2
# The dense tasks of `make run-dense`, added to params.yaml's tasks by DVC (Hydra's override grammar: `++` adds a key
# or sets it again): boxes and masks of data/fashion-scenes, 2,000 train and 500 test scenes of 96 px.
SCENES := kind: detection, format: coco, root: data/fashion-scenes, classes: [], budgets: [0.01, 0.1, 1.0]
MASKS := kind: segmentation, format: masks, root: data/fashion-scenes, budgets: [0.01, 0.1, 1.0], classes: \
	[background, T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot]
# The parts of the team stack `make stack-down` stops (empty: all of them), e.g. SERVICES=mlflow to restart one.
SERVICES ?=

# No telemetry from any tool we drive.
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help setup data run run-dense test test-fast test-stack gpu-wheels gpu-check lint format ui prefect-server \
	serve deploy stack stack-down stack-status clean

.DEFAULT_GOAL := help

##@ Run the pipeline
run: setup  ## run the pipeline on the default data, print the results
	sslops repro
	sslops report

run-dense: setup  ## also detection and segmentation on generated scenes
	dvc exp run -S '++tasks.scene_boxes={$(SCENES)}' -S '++tasks.scene_masks={$(MASKS)}'
	sslops report

setup: $(STAMP) $(ASSETS) data  ## create .venv (pip, locked versions) and get the data

# Great Expectations' Data Docs load scripts, styles and fonts from public CDNs; these pinned npm packages let the
# validate stage serve them from the project, so the pages render without internet.
$(ASSETS): vendor/datadocs/package-lock.json
	@if ! command -v npm >/dev/null; then \
		echo "make: no npm here: the Data Docs will load their scripts from public CDNs (install Node.js and npm)"; \
	elif ! (cd vendor/datadocs && npm ci --ignore-scripts --silent); then \
		echo "make: npm ci failed: the Data Docs will load their scripts from public CDNs until it succeeds"; \
	else touch $@; fi

data: $(STAMP)  ## make data/ match data.dvc (DVC cache, remote, or fetch)
	@bash scripts/setup_data.sh

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,stack]'
	touch $@

clean:  ## remove artifacts/ (metrics/ and plots/ are in git)
	rm -rf artifacts

##@ See the results
ui: $(STAMP)  ## the MLflow UI on http://$(HOST):$(MLFLOW_PORT)
	@echo "the runs: http://$(HOST):$(MLFLOW_PORT)/#/experiments/1/runs?workflowType=machine_learning"
	mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow/mlflow.db" --host $(HOST) --port $(MLFLOW_PORT)

prefect-server: $(STAMP)  ## a local Prefect server and UI on http://$(HOST):$(PREFECT_PORT)
	# The UI finds its API through these settings, not through --port: without them it calls port 4200.
	PREFECT_HOME="$(CURDIR)/.prefect" PREFECT_SERVER_API_HOST=$(HOST) PREFECT_SERVER_API_PORT=$(PREFECT_PORT) \
	PREFECT_UI_API_URL="http://$(HOST):$(PREFECT_PORT)/api" prefect server start --host $(HOST) --port $(PREFECT_PORT)

serve: setup  ## serve the scheduled deployment (flow.cron in params.yaml)
	PREFECT_API_URL="$${PREFECT_API_URL:-http://$(HOST):$(PREFECT_PORT)/api}" python flows/ssl_pipeline.py

deploy: setup  ## register the deployment for the work pool's workers
	python flows/ssl_pipeline.py deploy

##@ Team stack (docs/deployment.md)
stack: $(STAMP)  ## PostgreSQL, MLflow, Prefect, a DVC remote for a team
	python scripts/stack.py up

stack-down:  ## stop it, or only SERVICES="mlflow ..." (data stays)
	python scripts/stack.py down $(SERVICES)

stack-status:  ## which parts of the team stack are running
	python scripts/stack.py status

##@ Development
test: setup  ## every test but the team stack's (end-to-end included)
	pytest -m "not stack" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)  ## unit tests only: no real MLflow, GX, DVC or Prefect
	pytest -m "not integration and not slow"

test-stack: setup  ## the team stack's tests (Debian's postgresql, chromium)
	pytest -m stack

# A GPU machine's check (bench/gpu_check.py): no .venv there, the machine's python3 with torch; wheels of what it
# lacks (MLflow, Great Expectations, DVC, pydantic...) go in .whl/: `make gpu-wheels` here, where pip can download,
# with GPU_NODE=FILE (the node's `pip list --format=freeze`). GPU_CHECK="--tiny --device cpu": a CPU's size.
GPU_CHECK ?=
GPU_NODE ?= scripts/gpu_node_packages.txt
gpu-wheels: $(STAMP)  ## fetch into .whl/ the wheels a GPU node lacks
	python scripts/gpu_wheels.py --have $(GPU_NODE)

gpu-check:  ## GPU machine: every stage on 224 px photos, loop on CUDA
	if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; fi
	PYTHONPATH=$(CURDIR)/src:/tmp/site$${PYTHONPATH:+:$$PYTHONPATH} python3 bench/gpu_check.py $(GPU_CHECK)

lint: $(STAMP)  ## ruff: lint and format check
	ruff check .
	ruff format --check .

format: $(STAMP)  ## ruff: fix what it can and format the tree
	ruff check --fix .
	ruff format .

help:  ## this list
	@awk 'BEGIN {FS = ":.*## "} /^##@ / {printf "\n%s\n", substr($$0, 5)} \
		/^[a-z-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST) \
		| sed -e 's/$$(HOST)/$(HOST)/g' -e 's/$$(MLFLOW_PORT)/$(MLFLOW_PORT)/g' -e 's/$$(PREFECT_PORT)/$(PREFECT_PORT)/g'
