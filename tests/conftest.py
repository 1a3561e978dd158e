"""Shared fixtures: a tiny causal LM built once per session and loaded through the service's own path."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.embedder.loading import BaseLM, load_base_lm
from service.embedder.tiny import build_tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_lm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a 2-layer, 64-wide random Llama with a byte-level BPE tokenizer (built in ~0.1 s)."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> BaseLM:
    """The tiny LM loaded on CPU by `load_base_lm`, exactly as a real model would be."""
    return load_base_lm(str(tiny_lm_path), device="cpu", cache_dir=tmp_path_factory.mktemp("tiny-cache"))
