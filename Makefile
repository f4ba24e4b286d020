# Two commands do all the set-up on a fresh machine:
#   make demo   - embedded broker + matcher + producer on the shipped model
#   make test   - the whole test suite
#   make reliability - the fault and bad-input suite, then docs/reliability.md from its figures
# Both create (or reuse) the virtualenv .venv inside the repository.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

RELIABILITY_FIGURES ?= docs/reliability.json

.PHONY: demo test reliability venv system-deps clean

# setuptools' "Editable installation" notice, which pip shows on every install, is information only
# (the package directories are mapped, so the editable install goes through an import hook).
comma := ,
$(STAMP): export PYTHONWARNINGS := $(if $(PYTHONWARNINGS),$(PYTHONWARNINGS)$(comma))ignore:Editable installation:UserWarning
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Prometheus (promtool + server) and docker-compose validate the deploy/ files in the tests; kcat
# is one of the foreign clients of tests/clients/, sox converts the WAV file it sends as pcm16;
# espeak-ng and flite speak the synthetic voices of tests/data/test_voices.py.
system-deps:
	bash .ci/system-deps

demo: $(STAMP)
	$(BIN)/digitmatch demo $(DEMO_ARGS)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# The figures come from the suite's own run; the page is rendered only when every check passed.
reliability: $(STAMP)
	rm -f $(RELIABILITY_FIGURES)
	DIGITMATCH_RELIABILITY_REPORT=$(RELIABILITY_FIGURES) $(BIN)/python -m pytest tests/reliability $(PYTEST_ARGS)
	$(BIN)/python tests/reliability/report.py $(RELIABILITY_FIGURES) docs/reliability.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
