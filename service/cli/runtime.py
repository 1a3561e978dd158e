"""What the offline commands set up first: logging and torch threads, the dataset and its embeddings."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path


def set_up_logging_and_threads(threads: int | None) -> None:
    """Log INFO lines with a timestamp; use `threads` torch threads (default: the settings', else torch's)."""
    import torch

    from service.config import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    n = threads or get_settings().torch_threads
    if n:
        torch.set_num_threads(n)


def load_group_dataset(data: Path | None):
    """(dataset, its path, the sha256 of its bytes): the JSONL file `data`, or the shipped OpinionQA."""
    from service.training.jsonl import read_jsonl
    from service.training.opinionqa import load_opinionqa, shipped_opinionqa_path

    path = data or shipped_opinionqa_path()
    ds = read_jsonl(data) if data else load_opinionqa()
    return ds, path, hashlib.sha256(path.read_bytes()).hexdigest()


def embed_group_dataset(ds):
    """(item table, embedder): every item of a group dataset embedded by the settings' embedder (cached on disk)."""
    from service.config import get_settings
    from service.embedder.embed import build_embedder
    from service.training.items import embed_dataset

    embedder = build_embedder(get_settings())
    return embed_dataset(ds, embedder, progress=True), embedder
