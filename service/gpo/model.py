"""The GPO transformer: in-context prediction of a group's preferences over items (pure torch)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from service.gpo.batch import GPOBatch


@dataclass
class GPOConfig:
    """Architecture of GPO (paper appendix C/G). Saved next to the weights as JSON."""

    dim_x: int  # item feature size (LLM embedding, plus population-prior features when used)
    d_model: int = 128
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 128
    input_mlp_depth: int = 4
    head_mlp_depth: int = 2
    dropout: float = 0.0
    min_std: float = 1e-3  # floor of the predicted std, so the NLL stays finite
    # Index in x of a feature holding a prior probability of the item (the population prior's mean).
    # When set, log(that prior) is added to the option score, so the per-question softmax starts at the
    # prior and the network learns the group's deviation from it. Items with prior <= 0 (unknown
    # questions) get no offset: their softmax starts uniform.
    base_logit_feature: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPOConfig:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Prediction:
    """Per-token outputs. `mean` is the per-question softmax over option scores (targets only)."""

    mean: torch.Tensor  # [B, N] probabilities; 0 on non-target tokens
    std: torch.Tensor  # [B, N]
    logits: torch.Tensor  # [B, N] raw option scores before the per-question softmax
    extras: dict = field(default_factory=dict)


def mlp(d_in: int, d_hidden: int, d_out: int, depth: int) -> nn.Sequential:
    """`depth` linear layers with ReLU in between (depth >= 1)."""
    assert depth >= 1, "an MLP needs at least one layer"
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth - 1):
        layers += [nn.Linear(d, d_hidden), nn.ReLU()]
        d = d_hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class ContextAttentionLayer(nn.Module):
    """Pre-norm transformer layer in which every token attends to context tokens only.

    Context keys/values never depend on targets, which is what makes per-context caching exact.
    """

    def __init__(self, cfg: GPOConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.ReLU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        # h: [B, N, C]; attend: [B, 1, 1, N] bool, True where the key is a context token
        B, N, C = h.shape
        q, k, v = self.qkv(self.norm1(h)).split(C, dim=-1)
        q = q.view(B, N, self.n_heads, C // self.n_heads).transpose(1, 2)  # [B, H, N, C/H]
        k = k.view(B, N, self.n_heads, C // self.n_heads).transpose(1, 2)
        v = v.view(B, N, self.n_heads, C // self.n_heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        a = a.transpose(1, 2).reshape(B, N, C)
        h = h + self.dropout(self.proj(a))
        return h + self.dropout(self.ff(self.norm2(h)))


def segment_softmax(logits: torch.Tensor, segment: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax of `logits` within each segment id of its row, over `valid` entries only.

    logits, segment (long, >= 0 where valid), valid: [B, N]. Returns 0 where not valid. Vectorised:
    a scatter over (row, segment) pairs, no Python loop over questions.
    """
    B, N = logits.shape
    n_seg = int(segment.max().item()) + 1  # every token's id indexes a segment, valid or not
    flat = (torch.arange(B, device=logits.device).unsqueeze(1) * n_seg + segment.clamp(min=0)).reshape(-1)
    masked = logits.masked_fill(~valid, float("-inf")).reshape(-1)
    seg_max = torch.full((B * n_seg,), float("-inf"), device=logits.device, dtype=logits.dtype)
    seg_max = seg_max.scatter_reduce(0, flat, masked, reduce="amax", include_self=True)
    shifted = (masked - seg_max[flat].detach()).masked_fill(~valid.reshape(-1), float("-inf"))
    e = shifted.exp()  # 0 where not valid
    seg_sum = torch.zeros(B * n_seg, device=logits.device, dtype=logits.dtype).index_add(0, flat, e)
    out = e / seg_sum[flat].clamp_min(torch.finfo(logits.dtype).tiny)
    return out.view(B, N)


class GPO(nn.Module):
    """GPO: tokens are (x, y) for context items and (x, 0) for targets; no positional encodings.

    Input features are standardised with statistics kept as buffers (saved in the checkpoint).
    """

    def __init__(self, cfg: GPOConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("x_mean", torch.zeros(cfg.dim_x))
        self.register_buffer("x_std", torch.ones(cfg.dim_x))
        self.embed = mlp(cfg.dim_x + 1, cfg.d_model, cfg.d_model, cfg.input_mlp_depth)
        self.layers = nn.ModuleList(ContextAttentionLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = mlp(cfg.d_model, cfg.d_model, 2, cfg.head_mlp_depth)

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardisation statistics of the training features (std floored to avoid blow-ups)."""
        assert mean.shape == (self.cfg.dim_x,) and std.shape == (self.cfg.dim_x,), "stats must be [dim_x]"
        self.x_mean.copy_(mean)
        self.x_std.copy_(std.clamp_min(1e-6))

    def encode_tokens(self, batch: GPOBatch) -> torch.Tensor:
        """Token embeddings [B, N, C]: standardised x joined with y (y zeroed outside the context)."""
        x = (batch.x - self.x_mean) / self.x_std  # [B, N, Dx]
        y_in = torch.where(batch.is_context, batch.y, torch.zeros_like(batch.y)).unsqueeze(-1)  # [B, N, 1]
        return self.embed(torch.cat([x, y_in], dim=-1))

    def forward(self, batch: GPOBatch) -> Prediction:
        assert bool(batch.is_context.any(dim=1).all()), "every row needs at least one context item"
        h = self.encode_tokens(batch)  # [B, N, C]
        attend = batch.is_context[:, None, None, :]  # [B, 1, 1, N]: keys = context tokens only
        for layer in self.layers:
            h = layer(h, attend)
        out = self.head(self.norm(h))  # [B, N, 2]
        logits, raw_std = out.unbind(-1)
        if self.cfg.base_logit_feature is not None:
            prior = batch.x[..., self.cfg.base_logit_feature]  # [B, N] raw (unstandardised) prior probability
            logits = logits + torch.where(prior > 0, prior.clamp_min(1e-4).log(), torch.zeros_like(prior))
        mean = segment_softmax(logits, batch.question, batch.is_target)
        std = self.cfg.min_std + F.softplus(raw_std)
        return Prediction(mean=mean, std=std.masked_fill(~batch.is_target, 1.0), logits=logits)

    def loss(self, batch: GPOBatch, pred: Prediction | None = None) -> torch.Tensor:
        """Gaussian NLL of the true y of target tokens, summed per row, averaged over rows."""
        pred = self(batch) if pred is None else pred
        nll = 0.5 * ((batch.y - pred.mean) / pred.std) ** 2 + pred.std.log() + 0.5 * math.log(2 * math.pi)
        nll = nll.masked_fill(~batch.is_target, 0.0)
        return nll.sum(dim=1).mean()
