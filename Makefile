# Two commands do all the set-up on a fresh machine:
#   make serve   -- venv, install, run the server on its built-in default model
#                   (sessions snapshotted to .seqinfer-state, restored on restart)
#   make test    -- venv, install, run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; install it before anything
# that depends on torch, or pip resolves a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: serve test fuzz install proto lint docker-e2e

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/seqinfer serve --durability snapshot --state-dir .seqinfer-state $(ARGS)

# The second run: the listed integration tests again, their servers serving
# gRPC through the front-end path (RemoteEngine over ipc to EngineHost).
test: $(BIN)/.installed
	bash scripts/test-services.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	SEQINFER_TEST_FRONTEND=remote $(BIN)/python -m pytest $(PYTEST_ARGS) \
	  $$(grep -v '^#' tests/integration/remote_mode.txt)

# The suite runs the fuzz test for about a minute with a fixed seed; this runs
# it 20 times longer (FUZZ_SCALE) with a fresh seed, printed with the outcome
# counts; FUZZ_SEED=N repeats a run.
FUZZ_SCALE ?= 20
fuzz: $(BIN)/.installed
	SEQINFER_FUZZ=long SEQINFER_FUZZ_SCALE=$(FUZZ_SCALE) SEQINFER_FUZZ_SEED=$(FUZZ_SEED) \
	  $(BIN)/python -m pytest tests/integration/test_fuzz.py --timeout=0 $(PYTEST_ARGS)

proto: $(BIN)/.installed
	PYTHON=$(BIN)/python PATH=$(abspath $(BIN)):$$PATH scripts/gen_proto.sh

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

# Builds the image on a locally built Debian base with an offline wheelhouse, starts
# the seqinfer container (host network, loopback ports), waits for its gRPC
# healthcheck and sends one real step from the Python client. Needs a running
# Docker engine; see docs/deploy.md. Not part of `make test`.
docker-e2e: $(BIN)/.installed
	PYTHON=$(abspath $(BIN))/python bash scripts/docker-e2e.sh
