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
	WANDB_MODE=offline $(VENV)/bin/rhmscale run --root $(DEMO_ROOT) --sweep demo --wandb offline \
		-o grammar.v=8 -o grammar.m=2 -o grammar.L=3 -o data.P=256 -o data.n_test=128 \
		-o model.arch=tree_unet -o model.width=64 -o train.max_steps=800 -o train.lr=2e-3 \
		-o train.lr_schedule=cosine -o train.batch_size=128 -o train.device=cpu

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-grammar: $(VENV)/.installed
	$(PY) bench/bench_grammar.py --out bench/results/grammar_cpu.json

clean-demo:
	rm -rf $(DEMO_ROOT)
