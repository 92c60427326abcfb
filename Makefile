# Set-up and checks. `make test` and `make run` do everything on a fresh
# machine (create .venv, install, build the PyG extensions) and are quiet when
# nothing is left to do.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dag_pyg-installed
LOG    := $(VENV)/install.log

.PHONY: setup test quick run lint bench gpu-check clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile .ci/setup_env.sh
	@echo "Installing into $(VENV) (log: $(LOG)); compiling the PyG extensions takes ~15 min the first time."
	@mkdir -p $(VENV)
	@PYTHON=$(PYTHON) bash .ci/setup_env.sh $(VENV) >$(LOG) 2>&1 || { tail -n 40 $(LOG) >&2; \
	  echo "Set-up failed: see $(LOG)" >&2; exit 1; }
	@touch $(STAMP)
	@echo "Environment ready: $(VENV)"

test: $(STAMP)
	@$(PY) -m pytest -q tests

# The fast tier for the edit-test loop: everything but whole training runs.
quick: $(STAMP)
	@$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	@$(VENV)/bin/ruff check dag_pyg tests benchmarks

# The main job: train the default experiment (digits.yaml) into runs/digits and
# print its final test error. A finished run is reported, an interrupted one
# resumed from its checkpoint.
RUN_DIR ?= runs/digits
run: $(STAMP)
	@if [ -f $(RUN_DIR)/summary.json ]; then \
	  $(PY) -c "import json; s = json.load(open('$(RUN_DIR)/summary.json')); \
	print(f\"final test error: {s['test_error_last']:.2f}% ($(RUN_DIR), done earlier)\")"; \
	elif [ -f $(RUN_DIR)/checkpoint.pt ]; then \
	  $(PY) -m dag_pyg train configs/digits.yaml --out $(RUN_DIR) --resume; \
	else \
	  $(PY) -m dag_pyg train configs/digits.yaml --out $(RUN_DIR); \
	fi

# Every CUDA path in one short run; on a CPU machine the CPU parts, exit 0.
gpu-check: $(STAMP)
	@$(PY) -m benchmarks.speed.gpu_check

bench: $(STAMP)
	@for b in benchmarks/speed/bench_*.py; do m=benchmarks.speed.$$(basename $$b .py); echo "== $$m"; $(PY) -m $$m || exit 1; done

clean-venv:
	rm -rf $(VENV)
