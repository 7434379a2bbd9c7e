# reelgen: the targets CI and people run. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine use e.g. `make install TORCH_SPEC=torch==2.11.0`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install lint test test-quick test-gpu demo bench fuzz all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	# Lightricks' reference (tests/test_reference_parity.py): its pure modules only, without the torchaudio
	# (and another torch) its metadata asks for
	$(BIN)/pip install -q --no-deps ltx-core==1.0.0 ltx-pipelines==1.0.0
	# s3rver (Node.js): an S3 stand-in that checks presigned-URL expiry, for tests/test_storage_s3.py
	npm install --silent --no-audit --no-fund --prefix $(VENV)/node s3rver@3.7.1
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check reelgen tests bench scripts
	$(BIN)/ruff format --check reelgen tests bench scripts
	$(BIN)/mypy

# The whole suite, what CI runs (docs/testing.md): in parallel processes (pytest-xdist; the Ray modules
# and modules with a costly shared fixture keep to one process each, tests/conftest.py), in a random
# order (pytest-randomly prints its seed; rerun an order with -p randomly -p "randomly_seed=N").
# Three processes on two cores: a test often waits on a worker, a server or PostgreSQL.
TEST_PROCS ?= 3
test: install
	$(BIN)/ruff check reelgen tests bench scripts
	$(BIN)/pytest -n $(TEST_PROCS) --dist loadgroup --durations=30

# The inner loop: every module at the unit level, no subprocess servers or workers, no Ray, no browser
test-quick: install
	$(BIN)/pytest -n 2 --dist loadgroup -m "not (process or ray or browser or slow)"

test-gpu: install
	$(BIN)/pytest -m gpu tests/gpu

demo: install
	$(BIN)/python scripts/demo.py

bench: install
	$(BIN)/python bench/engine.py --profile ltx-2-tiny --duration 5
	$(BIN)/python bench/engine.py --profile ltx-2-tiny --duration 15 --mode professional
	$(BIN)/python bench/load.py
	$(BIN)/python bench/soak.py --seconds 60

# nightly: 10 minutes of coverage-guided fuzzing per parser (crashes: see tests/fuzz/atheris_parsers.py)
fuzz: install
	$(BIN)/pip install -q atheris
	$(BIN)/python tests/fuzz/atheris_parsers.py generate -max_total_time=600 -dict=tests/fuzz/generate.dict -artifact_prefix=fuzz-corpus/ fuzz-corpus/generate
	$(BIN)/python tests/fuzz/atheris_parsers.py url -max_total_time=600 -dict=tests/fuzz/url.dict -artifact_prefix=fuzz-corpus/ fuzz-corpus/url

all: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-out fuzz-corpus
