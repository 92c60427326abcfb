# Set-up and checks. `make test` and `make run` do everything on a fresh
# machine (create .venv, install, build the PyG extensions) and are quiet when
# nothing is left to do.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dag_pyg-installed
LOG    := $(VENV)/install.log

.PHONY: setup test run lint bench clean-venv

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

lint: $(STAMP)
	@$(VENV)/bin/ruff check dag_pyg tests benchmarks

run: $(STAMP)

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
