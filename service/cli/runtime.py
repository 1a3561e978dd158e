"""What the offline commands set up first: logging and torch threads, the dataset and its embeddings."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import typer


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


def print_check(check, *, fatal: bool, err: bool = False) -> None:
    """Print a `DatasetCheck`: what training can use of a dataset and what stops it; with `fatal`, a dataset that
    cannot train ends the command with status 1, else its problems are warnings."""
    for line in check.lines():
        typer.echo(line, err=err)
    for problem in check.problems:
        typer.echo(f"{'error' if fatal else 'warning'}: {problem}", err=True)
    if check.ok:
        typer.echo("check: training and evaluation can use this dataset", err=err)
    elif fatal:
        raise typer.Exit(1)


def check_group_dataset(
    ds, groups: Sequence[str] | None = None, n_context: int = 20, splits: Sequence[float] = (), need_prior: bool = True
) -> None:
    """End the command (status 1) when `ds` cannot train, before anything is embedded; silent when it can."""
    from service.training.checks import check_dataset

    check = check_dataset(ds, groups, n_context, splits, need_prior)
    if not check.ok:
        typer.echo("the dataset cannot train (nothing embedded):", err=True)
        print_check(check, fatal=True, err=True)
