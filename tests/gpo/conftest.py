"""Shared helpers for the GPO tests: tiny configs, random questions and episodes (CPU, one thread)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import torch

from service.gpo.batch import Episode, GPOBatch, collate
from service.gpo.model import GPO, GPOConfig, GPOOutput

DIM_X = 8

Question = tuple[torch.Tensor, torch.Tensor]  # (x [k, DIM_X], y [k]) of one question's k options


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Another process trains on the machine: keep torch on a single thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**overrides) -> GPOConfig:
    kw = dict(dim_x=DIM_X, d_model=16, n_layers=2, n_heads=2, d_ff=16, input_mlp_depth=2, head_mlp_depth=2)
    kw.update(overrides)
    return GPOConfig(**kw)


def tiny_model(seed: int = 0, **overrides) -> GPO:
    """A randomly initialised tiny GPO in eval mode, with non-trivial feature statistics."""
    torch.manual_seed(seed)
    model = GPO(tiny_config(**overrides))
    model.set_feature_stats(torch.randn(DIM_X) * 0.1, torch.rand(DIM_X) + 0.5)
    return model.eval()


def make_questions(gen: torch.Generator, n: int) -> list[Question]:
    """`n` questions with 2-4 options each; y is a distribution over the options."""
    out = []
    for _ in range(n):
        k = int(torch.randint(2, 5, (1,), generator=gen))
        x = torch.randn(k, DIM_X, generator=gen)
        y = torch.softmax(torch.randn(k, generator=gen), dim=0)
        out.append((x, y))
    return out


def build_episode(ctx: Sequence[Question], tgt: Sequence[Question], ctx_qid: str = "zero") -> Episode:
    """Context questions first, then targets numbered 0..T-1 in order.

    ctx_qid: "zero" gives context tokens question id 0 (as training does); "after" numbers them
    T, T+1, ... (after the target ids).
    """
    xs, ys, is_ctx, qid = [], [], [], []
    for j, (x, y) in enumerate(ctx):
        xs.append(x)
        ys.append(y)
        is_ctx.append(torch.ones(len(y), dtype=torch.bool))
        qid.append(torch.full((len(y),), 0 if ctx_qid == "zero" else len(tgt) + j, dtype=torch.long))
    for j, (x, y) in enumerate(tgt):
        xs.append(x)
        ys.append(y)
        is_ctx.append(torch.zeros(len(y), dtype=torch.bool))
        qid.append(torch.full((len(y),), j, dtype=torch.long))
    return Episode(x=torch.cat(xs), y=torch.cat(ys), is_context=torch.cat(is_ctx), question=torch.cat(qid))


def permute_episode(ep: Episode, perm: torch.Tensor) -> Episode:
    return Episode(x=ep.x[perm], y=ep.y[perm], is_context=ep.is_context[perm], question=ep.question[perm])


def predict(model: GPO, batch: GPOBatch | Sequence[Episode]) -> GPOOutput:
    if not isinstance(batch, GPOBatch):
        batch = collate(batch)
    with torch.no_grad():
        return model(batch)
