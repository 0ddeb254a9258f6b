# raytron: `make demo` sets everything up in .venv and runs the demo; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo demo-down test test-fast lint bench clean

venv: $(STAMP)

# Reinstalls whenever pyproject.toml (the one place versions are pinned) changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	@echo "== starting the embedded local Ray head (127.0.0.1 only)"
	$(BIN)/raytron up
	@echo "== submitting examples/hello.yaml and following it to the end"
	$(BIN)/raytron submit examples/hello.yaml --wait
	@echo "== the same job on 2 workers, overriding the spec from the command line"
	$(BIN)/raytron submit examples/hello.yaml --wait --set resources.num_workers=2 --set python.kwargs.greeting=hi
	$(BIN)/raytron jobs
	$(BIN)/raytron status
	@echo "== building WebDataset shards of the digits data set, then verifying every checksum"
	$(BIN)/raytron data build --source digits --out .demo/digits --shard-size-bytes 262144
	$(BIN)/raytron data inspect .demo/digits --verify
	@echo "== data-parallel training on those shards: 2 workers, bf16, checkpoints under .demo/runs/digits-mlp"
	$(BIN)/raytron submit examples/train-digits.yaml --wait --set storage.path=$(CURDIR)/.demo/runs
	@echo "== exporting the trained model to ONNX, parity-checked on validation samples, into a Triton model repository"
	$(BIN)/raytron export .demo/runs/digits-mlp --name digits --repo .demo/model_repository
	@echo "== serving it: 2 Triton replicas behind the gateway on a free loopback port, called with tritonclient, then Ctrl-C"
	BIN=$(BIN) examples/demo_serve.sh .demo/model_repository
	@echo "== the head keeps running for your own jobs; 'make demo-down' or '$(BIN)/raytron down' stops it"

demo-down: venv
	$(BIN)/raytron down

# The whole suite: fast tier plus real Ray heads (CI's budget is 20 minutes on 2 cores; the
# slowest tests are listed at the end, to see where that goes).
test: venv
	$(BIN)/python -m pytest --durations=25

# Seconds: specs, CLI validation, packaging; no cluster.
test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

lint: venv
	$(BIN)/ruff check cluster datasets trainers serving tests bench

# Baselines (Ray Serve, RLlib) come from the optional `bench` extra.
bench: venv
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/raytron bench submit
	$(BIN)/raytron bench data
	$(BIN)/raytron bench ddp
	$(BIN)/raytron bench serving
	$(BIN)/raytron bench tune
	$(BIN)/raytron bench rl
	$(BIN)/raytron bench autoscale

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
