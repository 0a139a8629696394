# Everything installs into .venv with pip (pip honours this machine's find-links for the CPU torch
# wheel; uv would silently fetch a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test unit integration bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium and its driver for the MLflow UI test (Debian packages; needs root, as in CI).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium + chromium-driver (apt)"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: no chromium/chromedriver and no root to install them: the MLflow UI test will be skipped"; \
	  fi; \
	fi

# The main job: a small NT3 search with ASHA in smoke mode (synthetic data in the real NT3 format, served
# through the real download path), local Ray, MLflow in ./mlflow.db: one parent run, a child per trial.
demo: $(STAMP)
	$(BIN)/candle-ray tune experiments/nt3.py --smoke --num-samples 6 --scheduler asha
	@echo "browse it: $(BIN)/candle-ray ui  (MLflow UI on http://127.0.0.1:5000, this folder's mlflow.db)"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 --durations=15 tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
