# The README's commands. `make demo` and `make test` work on a fresh clone: they create .venv and install.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?= experiments/toy_realistic.yaml
PYTEST_ARGS ?=
# Every optional extra (pyproject.toml): the demo and the tests cover all stages. A base install is `pip install .`
EXTRAS ?= dev,ray,tf,postgres

.PHONY: install demo test test-all lint format ui ui-screenshots clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the main job, end to end, on the realistic toy (experiments/toy_realistic.yaml)
	HF_HUB_OFFLINE=1 $(PY) -m albert_exp main --config $(CONFIG)

test: install  ## the default test run (fast; `slow` tests excluded)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install  ## every test, slow ones included
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check albert_exp tests benchmarks scripts
	$(VENV)/bin/ruff format --check albert_exp tests benchmarks scripts

format: install
	$(VENV)/bin/ruff format albert_exp tests benchmarks scripts

ui: install  ## the MLflow UI on 127.0.0.1:5000 over mlflow.db
	MLFLOW_DISABLE_TELEMETRY=$${MLFLOW_DISABLE_TELEMETRY:-true} $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

ui-screenshots: install  ## PNGs of the MLflow UI over the demo's store (after `make demo`), with headless Chromium
	command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell fonts-dejavu-core >/dev/null; } || \
		{ echo "ui-screenshots: install Debian's chromium-headless-shell (or chromium) first"; exit 2; }
	$(PY) scripts/ui_screenshots.py --store sqlite:///mlflow.db --out docs/ui --config $(CONFIG)

clean:
	rm -rf runs mlruns/* mlflow.db optuna.db
