# Two commands matter to a newcomer: `make run` and `make test`.
# Everything they need is installed by the targets below, on a fresh machine too.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export ALB_CACHE_DIR ?= $(HOME)/.cache/alb

.PHONY: help venv services test check lint fmt run run-cluster sim demo lock clean

help:
	@echo "make run     start the bridge on 127.0.0.1:8080 (simulated fleet if no Ollama answers)"
	@echo "make run-cluster  a local Redis and alb serve --workers 2 on 127.0.0.1:8080 (replicas)"
	@echo "make test    create .venv, install, provision Kafka and Redis, run the whole suite"
	@echo "make check   ruff + mypy --strict on the packages + the layering contracts (import-linter)"
	@echo "make sim     run the simulated Ollama fleet from examples/fleet.yaml"
	@echo "make demo    replay a synthetic trace directly and through the bridge, print before/after"

# The venv is rebuilt when the dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt
	@PYTHON=$(PYTHON) scripts/prereqs --run
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(STAMP)

# Kafka jars (Maven Central), a CPU-only Ollama built from the Go module proxy (both
# cached under $(ALB_CACHE_DIR)) and Debian's redis-server. The services themselves
# are started once per test run by session fixtures.
services: venv
	scripts/prereqs
	scripts/redis install
	scripts/chromium install
	scripts/prometheus install
	scripts/kustomize install
	scripts/kafka fetch
	scripts/build-ollama >/dev/null

test: services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy tests/services tests/integration
	$(BIN)/lint-imports
	$(BIN)/python -m ingest.schema_compat

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The bridge on 127.0.0.1:8080 in front of $OLLAMA_HOST (default http://127.0.0.1:11434).
# With OLLAMA_HOST unset and nothing answering there, an in-process simulated fleet is
# served instead, and the start-up banner says so.
run: venv
	$(BIN)/alb serve --host 127.0.0.1 --port 8080 --sim-fallback

run-cluster: venv
	scripts/run-cluster

sim: venv
	$(BIN)/alb sim --config examples/fleet.yaml

demo: venv
	$(BIN)/alb demo

# Refresh the pins after changing pyproject.toml's bounds.
lock: venv
	$(BIN)/python scripts/lock.py > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
