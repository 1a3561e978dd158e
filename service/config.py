"""Settings: the only module that reads the environment (every variable is GPO_*)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Runtime configuration. Defaults are the embedded, single-machine ones."""

    model_config = SettingsConfigDict(env_prefix="GPO_", env_file=None, extra="ignore")

    # Base LLM used for embeddings and generation: "smollm2" (the bundled GGUF), or any Hugging Face
    # causal LM folder / id that is available offline.
    embedder: str = Field("smollm2", description="base LLM: 'smollm2' (bundled) or a HF causal LM path/id")
    embedder_revision: str | None = Field(None, description="revision of the base LLM (recorded in caches)")
    pooling: str = Field("mean", description="mean | last | mean_last")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    load_in_8bit: bool | None = Field(None, description="8-bit bitsandbytes; default: on for CUDA, off for CPU")
    embed_batch_size: int = Field(16, ge=1)
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's)")
    threads: int = Field(
        8,
        ge=1,
        le=256,
        description="threads of the API process for blocking work (database, caches, GPO forwards); more of them "
        "contend for the GIL with the event loop that reads and answers requests (anyio's default is 40)",
    )

    cache_dir: Path = Field(PROJECT_ROOT / ".cache", description="embedding cache and converted model weights")
    model_store: Path = Field(PROJECT_ROOT / "model_store", description="root of versioned GPO checkpoints")
    checkpoint: str = Field("opinionqa-gpo", description="checkpoint name under model_store (latest version)")
    matcher: bool = Field(
        True,
        description="when the checkpoint stores a matcher, a question outside its prior bank borrows the prior of its "
        "nearest known question (a rewording; the bundled all-MiniLM-L6-v2 runs in the API process); false: exact "
        "text matches only",
    )
    rating_checkpoint: str | None = Field(
        None, description="rating checkpoint (gpo train-individuals) serving rating groups; unset: not predicted"
    )
    comparison_checkpoint: str | None = Field(
        None, description="comparison checkpoint (gpo train-individuals --kind comparison) serving comparison groups"
    )

    # --- storage, cache, worker and HTTP server ---
    database_url: str = Field(
        f"sqlite:///{PROJECT_ROOT / 'var' / 'gpo.sqlite3'}",
        description="SQLAlchemy URL: a SQLite file by default, postgresql+psycopg://... for Postgres",
    )
    redis_url: str | None = Field(None, description="Redis URL for the embedding/context cache; unset: in-process LRU")
    redis_prefix: str = Field("gpo:", description="prefix of every Redis key this service writes")
    cache_max_items: int = Field(200_000, ge=1, description="in-process LRU size (vectors)")
    worker_url: str | None = Field(None, description="embedding worker base URL; unset: the LLM runs in-process")
    worker_timeout_s: float = Field(120.0, gt=0, description="timeout of one call to the worker")
    embed_url: str | None = Field(
        None,
        description="OpenAI-compatible embeddings server (POST /v1/embeddings) for item vectors; unset: "
        "GPO_WORKER_URL, or in process",
    )
    embed_api: Literal["gpo", "openai"] = Field(
        "gpo",
        description="what GPO_EMBED_URL speaks: 'gpo' (a `gpo worker`, which names its weights, pooling and "
        "template in /v1/models) or 'openai' (any OpenAI-compatible embeddings server, e.g. Infinity, TEI or vLLM: "
        "it cannot say what it serves, so the embedder key is declared by GPO_EMBEDDER, GPO_EMBEDDER_REVISION and "
        "GPO_POOLING, and `gpo embed` / `gpo train` embed through the same server)",
    )
    embed_model: str | None = Field(
        None, description="`model` sent to an 'openai' embeddings server (GPO_EMBED_API); unset: GPO_EMBEDDER"
    )
    generate_url: str | None = Field(
        None,
        description="OpenAI-compatible completions server (POST /v1/completions: n, seed, temperature, max_tokens) "
        "for /generate, sent plain text (the API applies the chat template); unset: GPO_WORKER_URL, or in process",
    )
    generate_model: str | None = Field(
        None,
        description="`model` sent to GPO_GENERATE_URL's /v1/completions (OpenAI-style servers that require it, such as "
        "a vLLM serving several models); unset: not sent",
    )
    generate_tokenizer: str | None = Field(
        None,
        description="the LLM whose chat template the API applies to /generate prompts (a path or id available "
        "offline, as GPO_EMBEDDER); unset: GPO_EMBEDDER, the LLM that also embeds",
    )
    generate_vectors: bool | None = Field(
        None,
        description="ask the completions server for each sample's vector, pooled while sampling (gpo-serve's "
        "return_embeddings extension); false: /generate embeds the samples through the embeddings server in one "
        "batched call. Unset: on unless GPO_GENERATE_URL names another server",
    )
    host: str = Field("127.0.0.1", description="bind address of `gpo serve` / `gpo worker`")
    port: int = Field(8000, ge=1, le=65535, description="port of `gpo serve`")
    worker_port: int = Field(8001, ge=1, le=65535, description="port of `gpo worker`")
    access_log: bool = Field(False, description="log one line per HTTP request (uvicorn's access log)")
    migrate_on_start: bool = Field(True, description="migrate the database to the newest schema when the API starts")
    database_connect_timeout_s: int = Field(5, ge=1, description="seconds to wait for a Postgres connection")
    retry_after_s: int = Field(5, ge=1, description="Retry-After of 503 answers (a dependency is down)")
    keep_alive_s: float = Field(
        30.0,
        gt=0,
        description="an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive). Longer than "
        "Retry-After: a client that waits as told and reuses its connection must not race the server closing it "
        "(uvicorn's 5 s default equalled Retry-After, and a retried write then met a closed connection)",
    )
    request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="deadline of a request, body reading included: past it the work is dropped and the client gets "
        "503 with Retry-After (408 when its body had not arrived); queues refuse work they cannot start in time",
    )

    # --- security: API keys and request size ---
    auth: bool = Field(
        True,
        description="require an API key (Authorization: Bearer) on every group, predict and generate route; "
        "false is accepted only with the embedded SQLite database (then every caller is tenant 'default')",
    )
    auth_cache_s: float = Field(
        5.0, ge=0, description="seconds a key lookup is cached per process (a revoked key works at most this long)"
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body; past it: 413")
    max_header_bytes: int = Field(
        32 * 1024, ge=4096, description="request headers, names and values together, at most; past it: 431"
    )
    max_headers: int = Field(100, ge=16, description="request headers at most; past it: 431")

    # --- fast path: encoded group contexts kept between requests, requests merged into one GPO forward ---
    context_cache_mb: float = Field(
        256.0, ge=0, description="in-process cache of encoded group contexts (GPO keys/values), MiB; 0: off"
    )
    context_cache_shared: bool = Field(
        True, description="also keep encoded contexts in Redis (when GPO_REDIS_URL is set)"
    )
    context_cache_ttl_s: float = Field(3600.0, gt=0, description="lifetime of an encoded context in Redis")
    batch_max_requests: int = Field(64, ge=1, description="requests merged into one GPO forward at most")
    batch_max_queue: int = Field(256, ge=1, description="requests waiting for a GPO forward; past it: 429")
    batch_wait_ms: float = Field(
        1.0, ge=0, le=100, description="under load, how long a forward waits for more requests to join it"
    )

    # --- request limits (a request past one is refused with 422 naming the field) ---
    max_items_per_request: int = Field(500, ge=1, description="context items per request (register or inline)")
    max_context_items: int = Field(2000, ge=1, description="context items a group may hold")
    max_questions_per_request: int = Field(256, ge=1, description="questions per /predict request")
    # 26: options are lettered A..Z in the prompt template the checkpoints were trained on.
    max_options: int = Field(26, ge=1, le=26, description="options per question")
    max_text_chars: int = Field(4000, ge=1, le=32_768, description="characters per question, option or prompt")
    max_generate_n: int = Field(8, ge=1, le=16, description="largest n of /generate")
    max_new_tokens: int = Field(256, ge=1, le=512, description="largest max_new_tokens of /generate")
    generate_sampling_rounds: int = Field(
        3, ge=1, le=10, description="sampling calls /generate makes at most to collect n distinct responses"
    )

    @property
    def embeddings_url(self) -> str | None:
        """Where item vectors come from: GPO_EMBED_URL, else GPO_WORKER_URL; None: in process."""
        return self.embed_url or self.worker_url

    @property
    def completions_url(self) -> str | None:
        """Where /generate samples: GPO_GENERATE_URL, else GPO_WORKER_URL; None: in process."""
        return self.generate_url or self.worker_url

    @property
    def sampling_returns_vectors(self) -> bool:
        """Whether /generate asks the completions server for the samples' vectors (see GPO_GENERATE_VECTORS)."""
        if self.generate_vectors is not None:
            return self.generate_vectors
        return self.generate_url is None or self.generate_url == self.embeddings_url

    @property
    def embeddings_model(self) -> str:
        """The `model` name sent to an 'openai' embeddings server."""
        return self.embed_model or self.embedder

    @model_validator(mode="after")
    def _declared_embedder(self) -> Settings:
        if self.embed_api == "openai":
            if not self.embed_url:
                raise ValueError("GPO_EMBED_API=openai needs GPO_EMBED_URL: the embeddings server to use")
            if not self.embedder_revision:
                raise ValueError(
                    "GPO_EMBED_API=openai needs GPO_EMBEDDER_REVISION: an OpenAI-compatible server does not say which "
                    "weights it serves, so the revision you declare names the vectors (cache keys, the checkpoint's "
                    "embedder check)"
                )
        return self

    @model_validator(mode="after")
    def _auth_off_only_embedded(self) -> Settings:
        if not self.auth and not self.database_url.startswith("sqlite"):
            raise ValueError(
                "GPO_AUTH=false is only allowed with the embedded SQLite database; with "
                f"{self.database_url.split(':', 1)[0]} every caller needs an API key (`gpo keys create TENANT`)"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings built once per process from the environment."""
    return Settings()
