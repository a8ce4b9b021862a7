# Set-up and entry points. Every target that runs code first makes sure the virtual
# environment exists and matches pyproject.toml (idempotent: a second call does nothing).
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel by default; a GPU user passes their own build, e.g.
#   make setup TORCH_SPEC="torch==2.9.1 --index-url https://download.pytorch.org/whl/cu128"
# or installs torch into .venv first (an importable torch is never replaced).
TORCH_SPEC ?= torch==2.13.0
# uv installs the pinned versions of requirements-lock.txt in ~15 s where pip took ~2 min on
# 2 cores (resolving and byte-compiling); the pins are pip's own resolution (`make lock`).
UV_SPEC ?= uv==0.13.9
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# dvc runs stage commands through the shell: put the venv first on PATH so `python` is ours.
RUN := PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1

.PHONY: setup lock system-packages run test test-fast lint bench gpu-check listening-check serve worker lab lab-worker mlflow-ui optuna-ui clean

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_SPEC)
	test -x $(BIN)/uv || $(BIN)/pip install --quiet $(UV_SPEC)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-lock.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## lock: re-resolve pyproject.toml (+ the dev extra) with pip in a scratch venv and pin the
## result in requirements-lock.txt (torch and this project left out: TORCH_SPEC decides torch)
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet $(TORCH_SPEC) && .lock-venv/bin/pip install --quiet -e '.[dev]'
	{ sed -n '1,3p' requirements-lock.txt; .lock-venv/bin/pip freeze --exclude-editable \
		| grep -v -e '^torch==' -e '^#'; } > requirements-lock.txt.tmp
	mv requirements-lock.txt.tmp requirements-lock.txt && rm -rf .lock-venv

## system-packages: what the tests start besides Python, from Debian's packages when absent:
# Chromium (the listening page and MLflow screenshots) and PostgreSQL (the Optuna storage test)
system-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } \
		|| missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## run: the main job, the whole DAG on the embedded default profile
run: setup
	$(RUN) $(BIN)/dvc repro

## test: the full suite, slow end-to-end tests included (this is what CI runs), on two
# pytest-xdist workers: the two end-to-end sweep modules (a Prefect stack each) one per worker,
# the rest around them (tests/conftest.py XDIST_GROUPS); the 15 slowest tests are listed last
test: setup system-packages
	$(RUN) $(BIN)/pytest -n 2 --dist loadgroup --durations=15

test-fast: setup
	$(RUN) $(BIN)/pytest -m "not slow"

## lint: ruff (lint + format) and mypy over models/, tasks/ and flows/ (CI runs it)
lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(RUN) $(BIN)/python -m benchmarks.corpus_build
	$(RUN) $(BIN)/python -m benchmarks.scorers_throughput
	$(RUN) $(BIN)/python -m benchmarks.codec_throughput
	$(RUN) $(BIN)/python -m benchmarks.dataloader_throughput
	$(RUN) $(BIN)/python -m benchmarks.training_throughput
	$(RUN) $(BIN)/python -m benchmarks.sweep_overhead
	$(RUN) $(BIN)/python -m benchmarks.lab_scaling

## gpu-check: here, before the GPU check runs on a GPU machine (README "GPU check"): the
## wheels the GPU image lacks into .gpu-wheels/, then every part on the CPU at toy sizes
gpu-check: setup
	benchmarks/gpu_check.sh --prepare
	benchmarks/gpu_check.sh --dry-run gpu-check

## listening-check: open reports/listening/index.html in headless Chromium, save a screenshot
listening-check: setup
	$(RUN) $(BIN)/python -m tasks.evaluate.listening_page reports/listening/index.html \
		--screenshot reports/listening_page.png

## serve: Prefect server (127.0.0.1:4200) + work pool + workers + served deployments
# WORKERS=2 for two CPU workers, GPUS=0,1,2,3 for one worker per GPU, STORAGE=postgresql+psycopg://...
WORKERS ?= 1
GPUS ?=
STORAGE ?=
serve: setup
	$(RUN) $(BIN)/python -m flows.serve --workers $(WORKERS) $(if $(GPUS),--gpus $(GPUS)) \
		$(if $(STORAGE),--storage $(STORAGE))

## worker: one more trial worker on the pool (GPU=i pins it to one GPU)
GPU ?=
worker: setup
	$(RUN) TTM_REPOSITORY=$(CURDIR) $(if $(GPU),CUDA_VISIBLE_DEVICES=$(GPU)) $(BIN)/prefect worker start \
		--pool ttm-trials --limit 1 $(if $(GPU),--name gpu-$(GPU))

## lab: a lab's head node (flows/lab.py): PostgreSQL (Optuna, MLflow, Prefect), the MLflow
## server with its artifacts, the Prefect server, the deployments; LAB_BIND=0.0.0.0 for a lab network
LAB_BIND ?= 127.0.0.1
lab: setup
	$(RUN) $(BIN)/python -m flows.lab head --bind $(LAB_BIND)

## lab-worker: a lab's worker host, from its clone: dvc pull, then a worker per GPU
# HEAD=head-node-name GPUS=0,1,2,3 (or WORKERS=N on CPUs); copy the head's .lab/pgpass first;
# NAME=... names the host in Prefect (default: its hostname; two clones on one machine need two)
HEAD ?= 127.0.0.1
lab-worker: setup
	$(RUN) $(BIN)/python -m flows.lab worker --head $(HEAD) --workers $(WORKERS) \
		$(if $(GPUS),--gpus $(GPUS)) $(if $(NAME),--name $(NAME))

## mlflow-ui: browse runs and ablation tables on http://127.0.0.1:5000
# --app-name: MLflow's server as is, its page opening a first visit in model-training mode
# without the Assistant panel (flows/mlflow_app.py; the entry point is in pyproject.toml);
# without MLflow's GenAI job runner, which nothing here uses (flows/local_servers.py)
mlflow-ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000 \
		--app-name score-aware-ttm

## optuna-ui: Optuna's dashboard for the studies in optuna.db on http://127.0.0.1:8080
## (installs the optional `dashboard` extra the first time)
optuna-ui: setup
	$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dashboard]'
	$(BIN)/optuna-dashboard sqlite:///$(abspath optuna.db) --host 127.0.0.1 --port 8080

clean:
	rm -rf $(VENV)
