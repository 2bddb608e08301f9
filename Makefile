# Everyday targets. `make serve` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: serve test models lint format bench bench-quick load sysdeps install install-dev clean constraints compose-test proto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The serving install: onnxruntime, no torch; the versions in constraints.txt.
$(VENV)/.installed-serve: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	@touch $@

# Everything the tests, training and load runs need (torch==2.13.0 CPU build).
$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[train,load,dev]'
	@touch $@ $(VENV)/.installed-serve

install: $(VENV)/.installed-serve
install-dev: $(VENV)/.installed-dev

## serve: install into .venv and serve every model in models/ on $(HOST):$(PORT)
serve: $(VENV)/.installed-serve
	$(BIN)/verdict-serve --host $(HOST) --port $(PORT)

## sysdeps: Debian packages the tests use (prometheus/promtool, wrk, h2load, docker-compose, postgresql)
sysdeps:
	@bash scripts/sysdeps.sh

## test: install everything, then run the whole suite
test: sysdeps $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## compose-test: docker-compose.yml for real: set up podman and a debootstrap base image when
## missing (Debian 12, root), build the images, run tests/deploy/stack against the running stack
## (verdict, Prometheus, Locust), remove everything; see docs/deploy.md
compose-test: sysdeps $(VENV)/.installed-dev
	VENV=$(VENV) bash scripts/compose-test.sh

## models: retrain the bundled models (seeded) in a temp folder, then `add` each to models/:
## a new version only where the model or its decision changed ("unchanged" otherwise)
MODELS ?= breast-cancer digits
models: $(VENV)/.installed-dev
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for name in $(MODELS); do \
		trained=$$($(BIN)/python -m training train configs/$$name.yaml --out "$$tmp/$$name"); \
		$(BIN)/python -m training add "$$trained" models/$$name --skip-unchanged; \
	done

## lint: ruff and mypy
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service training bench

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

## proto: regenerate service/grpc/generated/ from service/grpc/inference.proto (grpcio-tools)
proto: $(VENV)/.installed-dev
	$(BIN)/python scripts/generate_proto.py

## constraints: pin the serving install's exact versions (a fresh venv's pip freeze)
constraints:
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/python -m pip install -q .
	{ head -3 constraints.txt; build/constraints-venv/bin/python -m pip freeze --exclude verdict; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf build/constraints-venv

## load: bounded headless Locust run (SLO gate) on a local server it starts and stops; HTML report in var/reports/ (USERS, SPAWN_RATE, RUN_TIME, VERDICT_SLO_P99_MS)
load: $(VENV)/.installed-dev
	VENV=$(VENV) bash scripts/load.sh

## bench: the benchmark (wrk vs verdict, the obvious server, the in-process ceiling; ~11 min);
## writes bench/results/<timestamp>.jsonl and the table in docs/benchmarks.md.
## BASELINE=DIR also measures the checkout in DIR side by side, before/after (~19 min)
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.run$(BENCH_BASELINE)

## bench-quick: one short round, fewer cases (~2 min; ~3 with BASELINE); does not rewrite docs/benchmarks.md
bench-quick: $(VENV)/.installed-dev
	$(BIN)/python -m bench.run --quick$(BENCH_BASELINE)

BASELINE ?=
BENCH_BASELINE = $(if $(BASELINE), --baseline '$(BASELINE)')
