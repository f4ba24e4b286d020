# Two commands do all the set-up on a fresh machine:
#   make demo   - embedded broker + matcher + producer on the shipped model
#   make test   - the whole test suite
# Both create (or reuse) the virtualenv .venv inside the repository.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test venv system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Prometheus (promtool + server) and docker-compose validate the deploy/ files in the tests.
system-deps:
	bash .ci/system-deps

demo: $(STAMP)
	$(BIN)/digitmatch demo $(DEMO_ARGS)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
