# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt

.PHONY: install demo test bench data clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install  ## train a digits classifier, attribute its predictions, print proponents/opponents
	$(VENV)/bin/influent demo

test: install  ## the whole suite (slow and GPU checks are skipped by default)
	$(PY) -m pytest

bench: install  ## solver × curvature benchmark (writes benchmarks/results/solvers.{json,md})
	$(PY) benchmarks/solvers.py

data:  ## full MNIST + Fashion-MNIST into .cache/influent-data (or $$INFLUENT_DATA), checked against SHA256SUMS
	scripts/fetch_data.sh

clean:
	rm -rf $(VENV) .pytest_cache
