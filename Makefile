# Each target creates or updates .venv itself, so both work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of this version is on disk on the project's machines; elsewhere pip picks a build.
TORCH_SPEC ?= torch==2.13.0
DEMO_ROOT ?= demo-runs
# bench-grammar writes here, beside the committed numbers (bench/results/grammar_cpu.json).
BENCH_OUT ?= bench/results/grammar_cpu.new.json

.PHONY: demo test test-fast test-gpu lint bench-grammar clean-demo

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/rhmscale sweep submit quick --root $(DEMO_ROOT)
	$(VENV)/bin/rhmscale sweep status $(DEMO_ROOT)/quick --runs
	$(VENV)/bin/rhmscale fit $(DEMO_ROOT)/quick --regressors "log v, k"  # m is 2 in every cell: k, not (k+1) log m

# The whole suite (on 2 cores about N min). Its SLURM tests bring the dev cluster (munged, mariadb,
# slurmdbd, slurmctld, slurmd) to their settings, starting it if it is down, and put it back as
# it was at the end (the summary's last lines say what was done).
test: $(VENV)/.installed
	@$(VENV)/bin/pytest -q; status=$$?; \
	if slurm/dev-cluster.sh status >/dev/null 2>&1; then \
	  echo "note: the dev SLURM cluster (munged, mariadb, slurmdbd, slurmctld, slurmd) runs, as it did before the tests; stop it: slurm/dev-cluster.sh stop"; \
	fi; exit $$status

# A subset for every change, under 5 minutes on 2 cores: no test marked slow (training for
# seconds to a minute) or slurm (the dev cluster); it starts nothing.
test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -q -m "not slow and not slurm"

# On a GPU machine: the GPU-only tests and a packed GPU sweep (bench/test_gpu.sh says what).
# It uses python3 from PATH, not the venv: on a bare device machine the wheels carried in .whl/
# are installed first; on a GPU box with the venv, activate it (source .venv/bin/activate).
test-gpu:
	bash bench/test_gpu.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-grammar: $(VENV)/.installed
	$(PY) bench/bench_grammar.py --out $(BENCH_OUT)
	@echo "compare with the committed bench/results/grammar_cpu.json; to replace it: mv $(BENCH_OUT) bench/results/grammar_cpu.json"

clean-demo:
	rm -rf $(DEMO_ROOT)
