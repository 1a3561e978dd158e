"""Extra training losses beside GPO.loss: a pairwise ranking loss for ratings and the Bradley-Terry loss of scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from service.gpo.batch import Episode, GPOBatch, collate
from service.gpo.model import GPO


def rank_loss(batch: GPOBatch, mean: torch.Tensor, temperature: float) -> torch.Tensor:
    """Pairwise logistic ranking loss of predicted scores [B, N] over the target pairs rated differently: per row,
    the mean over its pairs times its number of targets (the NLL's scale: a sum over targets), averaged over rows."""
    t = batch.is_target
    better = (batch.y[:, :, None] > batch.y[:, None, :]) & t[:, :, None] & t[:, None, :]  # [B, N, N]
    margin = (mean[:, :, None] - mean[:, None, :]) / temperature
    per_pair = F.softplus(-margin).masked_fill(~better, 0.0)
    n_pairs = better.sum(dim=(1, 2)).clamp_min(1)
    return (per_pair.sum(dim=(1, 2)) / n_pairs * t.sum(dim=1)).mean()


def bt_loss(
    model: GPO, episodes: Sequence[Episode], pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> torch.Tensor:
    """Bradley-Terry cross-entropy of the target pairs, summed per episode, averaged over episodes.

    Each episode's target tokens are single items scored by the score head; its pairs (a, b, label) index those
    targets (positions among the targets, label 1 when a is preferred): P(a > b) = sigmoid(s_a - s_b).
    """
    logits = model(collate(list(episodes))).logits
    total = logits.new_zeros(())
    for b, (ep, (ia, ib, lab)) in enumerate(zip(episodes, pairs, strict=True)):
        n_ctx = int(ep.is_context.sum())
        s = logits[b, n_ctx : ep.y.shape[0]]
        diff = s[torch.from_numpy(ia)] - s[torch.from_numpy(ib)]
        total = total + F.binary_cross_entropy_with_logits(diff, torch.from_numpy(lab), reduction="sum")
    return total / len(episodes)
