"""Episodes of one person: rated items, pairs of items rated differently, and Bradley-Terry episodes."""

from __future__ import annotations

import numpy as np
import torch

from service.gpo.batch import Episode


def rating_episode(x: torch.Tensor, y: np.ndarray, ctx: np.ndarray, tgt: np.ndarray) -> Episode:
    """Context items first, then targets; y: the person's normalised scores [I] (NaN where unrated)."""
    rows = np.concatenate([ctx, tgt])
    yy = torch.from_numpy(np.nan_to_num(y[rows]).astype(np.float32))
    is_ctx = torch.zeros(len(rows), dtype=torch.bool)
    is_ctx[: len(ctx)] = True
    return Episode(x=x[rows], y=yy, is_context=is_ctx, question=torch.arange(len(rows)))


def comparison_pairs(y: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, label) over the pairs of `items` with different scores y; label 1 if a is preferred."""
    a_idx, b_idx = np.triu_indices(len(items), k=1)
    a, b = items[a_idx], items[b_idx]
    keep = y[a] != y[b]
    a, b = a[keep], b[keep]
    return a, b, (y[a] > y[b]).astype(np.float32)


def comparison_episode(
    x: torch.Tensor,
    y: np.ndarray,
    ctx: np.ndarray,
    tgt: np.ndarray,
    rng: np.random.Generator,
    max_ctx_pairs: int | None = None,
    max_tgt_pairs: int | None = None,
) -> tuple[Episode, tuple[np.ndarray, np.ndarray]]:
    """Pair tokens x_a - x_b. Context pairs: among context items; targets: pairs among target items. Each pair
    is presented in a random orientation (so labels are balanced). Returns the episode and the target pairs."""

    def pairs(items: np.ndarray, cap: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b, lab = comparison_pairs(y, items)
        if cap is not None and len(a) > cap:
            pick = rng.choice(len(a), size=cap, replace=False)
            a, b, lab = a[pick], b[pick], lab[pick]
        flip = rng.random(len(a)) < 0.5
        a, b = np.where(flip, b, a), np.where(flip, a, b)
        return a, b, np.where(flip, 1.0 - lab, lab).astype(np.float32)

    ca, cb, cl = pairs(ctx, max_ctx_pairs)
    ta, tb, tl = pairs(tgt, max_tgt_pairs)
    xa = torch.cat([x[ca] - x[cb], x[ta] - x[tb]])
    yy = torch.from_numpy(np.concatenate([cl, tl]))
    is_ctx = torch.zeros(len(yy), dtype=torch.bool)
    is_ctx[: len(cl)] = True
    return Episode(x=xa, y=yy, is_context=is_ctx, question=torch.arange(len(yy))), (ta, tb)


def _oriented_pairs(
    y: np.ndarray, items: np.ndarray, rng: np.random.Generator | None, cap: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of `items` rated differently (at most `cap`), each in a random orientation when `rng` is given."""
    a, b, lab = comparison_pairs(y, items)
    if rng is None:
        return a, b, lab
    if cap is not None and len(a) > cap:
        pick = rng.choice(len(a), size=cap, replace=False)
        a, b, lab = a[pick], b[pick], lab[pick]
    flip = rng.random(len(a)) < 0.5
    return np.where(flip, b, a), np.where(flip, a, b), np.where(flip, 1.0 - lab, lab).astype(np.float32)


def bt_episode(
    x: torch.Tensor,
    y: np.ndarray,
    ctx: np.ndarray,
    tgt: np.ndarray,
    rng: np.random.Generator | None,
    cap: int | None = None,
) -> tuple[Episode, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """comparison_bt: context pair tokens [x_a - x_b, 1], then the target items [x_i, 0]. Returns the episode and
    the target pairs (positions among the targets, labels) the Bradley-Terry loss is taken on."""
    ca, cb, cl = _oriented_pairs(y, ctx, rng, cap)
    one, zero = torch.ones(len(ca), 1), torch.zeros(len(tgt), 1)
    xs = torch.cat([torch.cat([x[ca] - x[cb], one], dim=1), torch.cat([x[tgt], zero], dim=1)])
    yy = torch.from_numpy(np.concatenate([cl, np.zeros(len(tgt), dtype=np.float32)]))
    is_ctx = torch.zeros(len(yy), dtype=torch.bool)
    is_ctx[: len(ca)] = True
    pos = {int(item): i for i, item in enumerate(tgt)}
    ta, tb, tl = _oriented_pairs(y, tgt, rng, cap)
    pairs = (
        np.array([pos[int(i)] for i in ta], dtype=np.int64),
        np.array([pos[int(i)] for i in tb], dtype=np.int64),
        tl,
    )
    return Episode(x=xs, y=yy, is_context=is_ctx, question=torch.arange(len(yy))), pairs
