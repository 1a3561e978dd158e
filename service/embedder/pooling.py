"""Pool per-token hidden states into one vector per text: mean, last real token, or both."""

from __future__ import annotations

from typing import Literal

import torch

PoolingMethod = Literal["mean", "last", "mean_last"]
POOLING_METHODS: tuple[str, ...] = ("mean", "last", "mean_last")


def pooled_dim(hidden_size: int, method: str) -> int:
    """Width of the pooled vector for a model of `hidden_size`."""
    check_method(method)
    return 2 * hidden_size if method == "mean_last" else hidden_size


def check_method(method: str) -> None:
    if method not in POOLING_METHODS:
        raise ValueError(f"unknown pooling {method!r}; expected one of {POOLING_METHODS}")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens. hidden [B, T, D], attention_mask [B, T] (1 = real) -> [B, D]."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    total = (hidden * mask).sum(dim=1)  # [B, D]
    count = mask.sum(dim=1).clamp(min=1.0)  # [B, 1]; an all-padding row gives zeros, not NaN
    return total / count


def last_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last real token, for left or right padding. [B, T, D], [B, T] -> [B, D]."""
    B, T = attention_mask.shape
    # Index of the last 1 in each row: T - 1 - (first 1 in the reversed row). Works whatever the padding side.
    last = T - 1 - attention_mask.flip(dims=[1]).to(torch.long).argmax(dim=1)  # [B]
    return hidden[torch.arange(B, device=hidden.device), last.to(hidden.device)]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str = "mean") -> torch.Tensor:
    """hidden [B, T, D], attention_mask [B, T] -> [B, D] ("mean", "last") or [B, 2D] ("mean_last")."""
    check_method(method)
    assert hidden.dim() == 3, f"hidden must be [B, T, D], got {tuple(hidden.shape)}"
    assert attention_mask.shape == hidden.shape[:2], (
        f"attention_mask {tuple(attention_mask.shape)} does not match hidden {tuple(hidden.shape)}"
    )
    if method == "mean":
        return mean_pool(hidden, attention_mask)
    if method == "last":
        return last_pool(hidden, attention_mask)
    return torch.cat([mean_pool(hidden, attention_mask), last_pool(hidden, attention_mask)], dim=-1)
