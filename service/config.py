"""Settings: the only module that reads the environment (every variable is GPO_*)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
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

    cache_dir: Path = Field(PROJECT_ROOT / ".cache", description="embedding cache and converted model weights")
    model_store: Path = Field(PROJECT_ROOT / "model_store", description="root of versioned GPO checkpoints")
    checkpoint: str = Field("opinionqa-gpo", description="checkpoint name under model_store (latest version)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings built once per process from the environment."""
    return Settings()
