"""The losses beside GPO.loss: the pairwise ranking loss of rating scores (the Bradley-Terry loss is tested with its
episodes in tests/training/test_individuals.py)."""

from __future__ import annotations

import torch

from service.gpo.batch import GPOBatch
from service.gpo.losses import rank_loss


def test_rank_loss_counts_only_target_pairs_rated_differently() -> None:
    y = torch.tensor([[0.9, 1.0, 0.0, 0.5, 0.5]])
    is_ctx = torch.tensor([[True, False, False, False, False]])
    batch = GPOBatch(x=torch.zeros(1, 5, 2), y=y, is_context=is_ctx, is_target=~is_ctx, question=torch.arange(5)[None])
    right = torch.tensor([[-9.0, 1.0, 0.0, 0.5, 0.4]])  # the context token's score must not matter
    wrong = torch.tensor([[9.0, 0.0, 1.0, 0.4, 0.5]])
    assert float(rank_loss(batch, right, 0.01)) < 1e-3  # pairs (1,2), (1,3), (1,4), (3,2), (4,2) all ordered right
    # every pair reversed by a margin of at least 0.1 / 0.01 = 10: loss ~ mean margin per pair times 4 targets
    assert float(rank_loss(batch, wrong, 0.01)) > 4 * 9
    tied = torch.tensor([[0.0, 1.0, 0.0, 0.5, 0.9]])  # only the tied pair (3, 4) is out of order: it is ignored
    assert float(rank_loss(batch, tied, 0.01)) < 1e-3
