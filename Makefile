# Two commands do all the set-up: `make run` (the main job, offline) and `make test`.
# Both create .venv with the pinned CPU torch first, then qconf with every backend.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: run test lint bench mutate clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/qconf run preset=flux-int8wo model=tiny-flux

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check qconf tests bench examples
	$(VENV)/bin/ruff format --check qconf tests bench examples

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

# Mutation testing of the torch-free core with the fast tests (about 10 min on 2 cores).
mutate: $(VENV)/.installed
	$(PY) bench/mutate.py

clean:
	rm -rf $(VENV) outputs multirun mutants
