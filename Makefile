# chatmesh: `make up` runs the whole mesh locally; `make test` runs every test.
# Everything is installed into .venv from the package registries; nothing else is needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
GEN    := stubs/src/chatmesh/py.typed
PROTOS := $(shell find protos -name '*.proto')
PYTEST_ARGS ?=
BENCH_ARGS ?=
CONN_ARGS ?=
ALERTS := deploy/observability/prometheus

.PHONY: all install protos lint rules promtool breaking typecheck test unit e2e up bench bench-connections clean distclean

all: install protos

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml stubs/pyproject.toml
	$(BIN)/pip install --quiet -e '.[local,dev,bench]'
	touch $@

install: $(STAMP) $(GEN)

$(GEN): $(STAMP) $(PROTOS) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	$(BIN)/pip install --quiet --no-deps -e ./stubs

protos: $(STAMP)
	$(PY) tools/gen_protos.py
	$(BIN)/pip install --quiet --no-deps -e ./stubs

lint: install rules
	$(BIN)/buf lint
	$(BIN)/buf format --exit-code -d
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Prometheus' own checker on the alert rules, and their unit tests.
rules: promtool
	promtool check rules $(ALERTS)/alerts.yml
	cd $(ALERTS) && promtool test rules alerts.test.yml

# promtool comes from Debian's `prometheus` package: installed when missing if we are root.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing promtool (Debian package prometheus)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "promtool is missing: install Debian's prometheus package" \
	      "(sudo apt-get install --no-install-recommends prometheus) or put promtool on PATH" >&2; \
	    exit 1; \
	  fi; }
	@command -v promtool >/dev/null 2>&1 || { echo "promtool still missing after installing" >&2; exit 1; }

breaking: install
	$(BIN)/buf breaking --against '.git#branch=main'

typecheck: install
	$(BIN)/mypy svckit gateway user_svc chat_svc presence_svc notify_svc persister launcher bench

test: install lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

unit: install promtool
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

e2e: install
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

up: install
	$(PY) -m launcher up

# On demand only, never part of `make test`: a few minutes; results in bench/results/.
bench: install
	$(PY) -m bench.suite $(BENCH_ARGS)

# On demand only, never part of `make test`: 5,000 idle sockets on one gateway and a reconnect
# storm, about 3 minutes; results in bench/results/.
bench-connections: install
	$(PY) -m bench.connections $(CONN_ARGS)

clean:
	-$(PY) -m launcher clean 2>/dev/null
	rm -rf .state

distclean: clean
	rm -rf $(VENV) stubs/src .pytest_cache .mypy_cache .ruff_cache
