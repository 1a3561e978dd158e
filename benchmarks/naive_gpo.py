"""The naive reference: GPO run the way the research code runs it, on the same weights and shapes as ours.

- training: the per-question softmax is a Python loop over rows and question ids (a softmax per question),
  and the loss is gathered the same way;
- evaluation: one forward per target option (each target option scored alone with the context), i.e.
  sum(options) forwards per group instead of one forward for all of a group's targets.

Same model class (service.gpo.model.GPO), so the comparison is of the computation strategy only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from service.gpo.batch import GPOBatch
from service.gpo.model import GPO


def naive_forward(model: GPO, batch: GPOBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [B, N] with the per-question softmax done in Python loops."""
    h = model.encode_tokens(batch)
    attend = batch.is_context[:, None, None, :]
    for layer in model.layers:
        h = layer(h, attend)
    out = model.head(model.norm(h))
    logits, raw_std = out.unbind(-1)
    if model.cfg.prior_readout != "none":
        logits = logits + model.prior_logits(batch)
    rows = []
    for b in range(batch.y.shape[0]):
        row = torch.zeros_like(logits[b])
        tgt = batch.is_target[b]
        for q in torch.unique(batch.question[b][tgt]).tolist():
            idx = torch.nonzero(tgt & (batch.question[b] == q)).squeeze(1)
            row = row.index_put((idx,), torch.softmax(logits[b, idx], dim=0))
        rows.append(row)
    mean = torch.stack(rows)
    std = model.cfg.min_std + F.softplus(raw_std)
    return mean, std


def naive_loss(model: GPO, batch: GPOBatch) -> torch.Tensor:
    """Gaussian NLL summed per row over target tokens, averaged over rows: a Python loop over rows."""
    mean, std = naive_forward(model, batch)
    total = 0.0
    for b in range(batch.y.shape[0]):
        t = batch.is_target[b]
        z = (batch.y[b, t] - mean[b, t]) / std[b, t]
        total = total + (0.5 * z**2 + std[b, t].log() + 0.5 * math.log(2 * math.pi)).sum()
    return total / batch.y.shape[0]


@torch.no_grad()
def naive_eval_group(model: GPO, x_ctx: torch.Tensor, y_ctx: torch.Tensor, x_tgt: torch.Tensor) -> torch.Tensor:
    """Scores of every target option of one group, one forward per option (context + that option), then a
    softmax per question is left to the caller. x_ctx [Nc, Dx], y_ctx [Nc], x_tgt [Nt, Dx] -> logits [Nt]."""
    out = []
    n_ctx = x_ctx.shape[0]
    is_ctx = torch.zeros(1, n_ctx + 1, dtype=torch.bool)
    is_ctx[0, :n_ctx] = True
    for i in range(x_tgt.shape[0]):
        x = torch.cat([x_ctx, x_tgt[i : i + 1]])[None]
        y = torch.cat([y_ctx, torch.zeros(1)])[None]
        batch = GPOBatch(x=x, y=y, is_context=is_ctx, is_target=~is_ctx, question=torch.zeros(1, n_ctx + 1).long())
        h = model.encode_tokens(batch)
        for layer in model.layers:
            h = layer(h, batch.is_context[:, None, None, :])
        logit = model.head(model.norm(h))[0, -1, 0]
        if model.cfg.prior_readout != "none":
            logit = logit + model.prior_logits(batch)[0, -1]
        out.append(logit)
    return torch.stack(out)
