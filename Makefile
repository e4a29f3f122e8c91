# Each target creates or updates .venv itself, so both work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of this version is on disk on the project's machines; elsewhere pip picks a build.
TORCH_SPEC ?= torch==2.13.0
DEMO_ROOT ?= demo-runs

.PHONY: demo test lint bench-grammar clean-demo

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/rhmscale sweep submit quick --root $(DEMO_ROOT)
	$(VENV)/bin/rhmscale sweep status $(DEMO_ROOT)/quick --runs
	$(VENV)/bin/rhmscale fit $(DEMO_ROOT)/quick

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-grammar: $(VENV)/.installed
	$(PY) bench/bench_grammar.py --out bench/results/grammar_cpu.json

clean-demo:
	rm -rf $(DEMO_ROOT)
