# reelgen: the targets CI and people run. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine use e.g. `make install TORCH_SPEC=torch==2.11.0`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install lint test test-gpu demo bench all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	# s3rver (Node.js): an S3 stand-in that checks presigned-URL expiry, for tests/test_storage_s3.py
	npm install --silent --no-audit --no-fund --prefix $(VENV)/node s3rver@3.7.1
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check reelgen tests bench scripts
	$(BIN)/ruff format --check reelgen tests bench scripts
	$(BIN)/mypy

test: install
	$(BIN)/ruff check reelgen tests bench scripts
	$(BIN)/pytest --durations=20

test-gpu: install
	$(BIN)/pytest -m gpu tests/gpu

demo: install
	$(BIN)/python scripts/demo.py

bench: install
	$(BIN)/python bench/engine.py --profile ltx-2-tiny --duration 5
	$(BIN)/python bench/engine.py --profile ltx-2-tiny --duration 15 --mode professional

all: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-out
