"""GPOBatch: padded item tokens with explicit context / target masks and question segment ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class GPOBatch:
    """B rows (one group episode each) of N item tokens. Padding is any token neither context nor target.

    question: per-row question index of every token (the per-question softmax runs within it);
    only meaningful on target tokens.
    """

    x: torch.Tensor  # [B, N, Dx] float item features
    y: torch.Tensor  # [B, N] float preferences (used only on context tokens as input, on targets as truth)
    is_context: torch.Tensor  # [B, N] bool
    is_target: torch.Tensor  # [B, N] bool
    question: torch.Tensor  # [B, N] long, >= 0

    def __post_init__(self) -> None:
        B, N = self.y.shape
        assert self.x.shape[:2] == (B, N), f"x {tuple(self.x.shape)} does not match y {(B, N)}"
        for name in ("is_context", "is_target", "question"):
            assert getattr(self, name).shape == (B, N), f"{name} must be [B, N]"
        assert not bool((self.is_context & self.is_target).any()), "a token cannot be context and target"

    def to(self, device: torch.device | str) -> GPOBatch:
        return GPOBatch(*(t.to(device) for t in (self.x, self.y, self.is_context, self.is_target, self.question)))

    @property
    def valid(self) -> torch.Tensor:
        return self.is_context | self.is_target


@dataclass
class Episode:
    """One row before padding: items with their features, preferences, roles and question ids."""

    x: torch.Tensor  # [n, Dx]
    y: torch.Tensor  # [n]
    is_context: torch.Tensor  # [n] bool (False = target)
    question: torch.Tensor  # [n] long


def collate(episodes: Sequence[Episode]) -> GPOBatch:
    """Pad episodes to the longest one; padded tokens are neither context nor target."""
    assert len(episodes) > 0, "cannot collate an empty list of episodes"
    B = len(episodes)
    N = max(int(e.y.shape[0]) for e in episodes)
    dx = episodes[0].x.shape[1]
    dtype = episodes[0].x.dtype
    x = torch.zeros(B, N, dx, dtype=dtype)
    y = torch.zeros(B, N, dtype=dtype)
    is_context = torch.zeros(B, N, dtype=torch.bool)
    is_target = torch.zeros(B, N, dtype=torch.bool)
    question = torch.zeros(B, N, dtype=torch.long)
    for b, e in enumerate(episodes):
        n = e.y.shape[0]
        x[b, :n] = e.x
        y[b, :n] = e.y
        is_context[b, :n] = e.is_context
        is_target[b, :n] = ~e.is_context
        question[b, :n] = e.question
    return GPOBatch(x=x, y=y, is_context=is_context, is_target=is_target, question=question)
