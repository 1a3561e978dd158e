"""pool(): mean / last / mean_last on hand-made tensors, left and right padding."""

from __future__ import annotations

import pytest
import torch

from service.embedder.pooling import pool, pooled_dim

# Two sequences, D = 2. Row 0 has 3 real tokens, row 1 has 1. Padding positions hold 100s so that any
# leak into the result is obvious.
REAL0 = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
REAL1 = torch.tensor([[7.0, -1.0]])
PAD = torch.tensor([100.0, 100.0])


def right_padded() -> tuple[torch.Tensor, torch.Tensor]:
    hidden = torch.stack([REAL0, torch.stack([REAL1[0], PAD, PAD])])  # [2, 3, 2]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    return hidden, mask


def left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    hidden = torch.stack([REAL0, torch.stack([PAD, PAD, REAL1[0]])])
    mask = torch.tensor([[1, 1, 1], [0, 0, 1]])
    return hidden, mask


@pytest.mark.parametrize("padded", [right_padded, left_padded])
def test_mean_uses_real_tokens_only(padded) -> None:
    hidden, mask = padded()
    out = pool(hidden, mask, "mean")
    assert torch.equal(out, torch.tensor([[3.0, 5.0], [7.0, -1.0]]))


@pytest.mark.parametrize("padded", [right_padded, left_padded])
def test_last_picks_last_real_token_whatever_the_padding_side(padded) -> None:
    hidden, mask = padded()
    out = pool(hidden, mask, "last")
    assert torch.equal(out, torch.tensor([[5.0, 9.0], [7.0, -1.0]]))


def test_mean_last_concatenates_mean_then_last() -> None:
    hidden, mask = right_padded()
    out = pool(hidden, mask, "mean_last")
    assert out.shape == (2, 4)
    assert torch.equal(out, torch.tensor([[3.0, 5.0, 5.0, 9.0], [7.0, -1.0, 7.0, -1.0]]))


def test_all_padding_row_gives_zeros_not_nan() -> None:
    hidden = torch.ones(1, 2, 3)
    out = pool(hidden, torch.zeros(1, 2, dtype=torch.long), "mean")
    assert torch.equal(out, torch.zeros(1, 3))


def test_bool_mask_is_accepted() -> None:
    hidden, mask = left_padded()
    assert torch.equal(pool(hidden, mask.bool(), "mean"), pool(hidden, mask, "mean"))
    assert torch.equal(pool(hidden, mask.bool(), "last"), pool(hidden, mask, "last"))


def test_unknown_method_and_bad_shapes_are_refused() -> None:
    hidden, mask = right_padded()
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "max")
    with pytest.raises(AssertionError, match="does not match"):
        pool(hidden, mask[:, :2], "mean")


def test_pooled_dim() -> None:
    assert pooled_dim(576, "mean") == 576
    assert pooled_dim(576, "last") == 576
    assert pooled_dim(576, "mean_last") == 1152
