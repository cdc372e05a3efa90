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

.PHONY: all install protos lint breaking typecheck test unit e2e up clean distclean

all: install protos

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml stubs/pyproject.toml
	$(BIN)/pip install --quiet -e '.[local,dev]'
	touch $@

install: $(STAMP) $(GEN)

$(GEN): $(STAMP) $(PROTOS) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	$(BIN)/pip install --quiet --no-deps -e ./stubs

protos: $(STAMP)
	$(PY) tools/gen_protos.py
	$(BIN)/pip install --quiet --no-deps -e ./stubs

lint: install
	$(BIN)/buf lint
	$(BIN)/buf format --exit-code -d
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

breaking: install
	$(BIN)/buf breaking --against '.git#branch=main'

typecheck: install
	$(BIN)/mypy svckit gateway user_svc chat_svc presence_svc notify_svc persister launcher

test: install lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

e2e: install
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

up: install
	$(PY) -m launcher up

clean:
	-$(PY) -m launcher clean 2>/dev/null
	rm -rf .state

distclean: clean
	rm -rf $(VENV) stubs/src .pytest_cache .mypy_cache .ruff_cache
