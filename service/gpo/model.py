"""The GPO transformer: in-context prediction of a group's preferences over items (pure torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from service.gpo.batch import GPOBatch

KINDS = ("choice", "rating", "comparison")


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
    # Population-prior readout (see service/gpo/prior.py). `prior_feature` is the index in x of the
    # prior block [known flag, mean, loadings (prior_rank columns)], raw (unstandardised) values.
    #   "mean":  option scores start at log(prior mean): the softmax starts at the population prior;
    #   "ridge": they start at log(mean + loadings @ z), z being the ridge solution of the context's
    #            residuals y - mean on their loadings (closed form, per row, differentiable; the ridge
    #            strength is learned). That is the collaborative-filtering estimate of the group from its
    #            context, which the transformer then corrects.
    # Items whose flag is 0 (questions the training groups never answered, no text prior) get no offset and take
    # no part in the ridge fit: their softmax starts uniform and the embedding must carry them. Choice items whose
    # prior is read from their text (service.gpo.features.TextPrior) have the flag TEXT_FLAG: they get the offset,
    # and weigh `text_weight` in the context's ridge fit (an own prior weighs 1).
    prior_feature: int | None = None
    prior_rank: int = 0
    prior_readout: str = "none"  # "none" | "mean" | "ridge"
    ridge_init: float = 0.01
    # Weight, in the context's ridge fit, of a context item whose prior is read from its text (flag TEXT_FLAG, in
    # (0, 1)); an item's own prior (flag 1) weighs 1. Chosen before training on the training groups
    # (service.training.validation.choose_text_weight): text-read loadings are shrunk estimates, and a context of
    # them needs more shrinkage of z than a context of known questions.
    text_weight: float = 0.5
    prior_floor: float = 1e-4  # the base probability is clamped here before the log
    # What one token is and what is predicted for it (appendix H):
    #   "choice":     an option of a multiple-choice question; y = the group's probability of the option;
    #                 a softmax per question over the option scores; Gaussian NLL;
    #   "rating":     one rated item (prompt + response); y = its score normalised to [0, 1]; the mean is
    #                 the score itself (no softmax); Gaussian NLL;
    #   "comparison": one pair (a, b) of responses; y = probability that a is preferred; the mean is
    #                 sigmoid(score); binary cross-entropy.
    kind: str = "choice"
    # Comparisons only: "pair" (appendix H: every token is a pair, the output is P(a preferred)) or "score"
    # (context tokens are pairs, target tokens single responses whose output is a scalar score; trained with a
    # Bradley-Terry loss on pairs of targets, see service.gpo.losses.bt_loss).
    comparison_head: str = "pair"
    # Comparisons with the score head and the "ridge" readout: a target response's score starts at
    # beta * mean + loadings @ u, u being one Newton step (from 0) of the ridge-regularised logistic fit of the
    # context pairs' labels on their loading differences, with beta * (mean_a - mean_b) as a fixed offset
    # (closed form, per row, differentiable; beta and the ridge strength are learned). Measured on held-out NYT
    # people: benchmarks/experiments/comparison_readout.py.
    pair_beta_init: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPOConfig:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ContextState:
    """A context encoded once (see GPO.encode_context): what every target attends to, per layer."""

    keys: torch.Tensor  # [L, B, H, Nc, C/H]
    values: torch.Tensor  # [L, B, H, Nc, C/H]
    mask: torch.Tensor  # [B, Nc] bool, True on context tokens (False = padding)
    z: torch.Tensor | None = None  # [B, prior_rank] ridge solution of the context (ridge readout only)

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def row(self, b: int) -> ContextState:
        """Row b alone, its padding cut off (what a cache keeps per group)."""
        n = int(self.mask[b].sum())
        assert bool(self.mask[b, :n].all()), "context tokens must come first in a row"
        return ContextState(
            keys=self.keys[:, b : b + 1, :, :n].clone(),
            values=self.values[:, b : b + 1, :, :n].clone(),
            mask=self.mask[b : b + 1, :n].clone(),
            z=None if self.z is None else self.z[b : b + 1].clone(),
        )

    @staticmethod
    def stack(states: Sequence[ContextState]) -> ContextState:
        """One batch from several states (rows padded to the longest context; padding is masked out)."""
        assert states, "nothing to stack"
        if len(states) == 1:
            return states[0]
        n = max(int(s.mask.shape[1]) for s in states)

        def pad(t: torch.Tensor, dim: int, value: float | bool = 0) -> torch.Tensor:
            extra = n - t.shape[dim]
            if extra == 0:
                return t
            shape = list(t.shape)
            shape[dim] = extra
            return torch.cat([t, t.new_full(shape, value)], dim=dim)

        zs = [s.z for s in states]
        return ContextState(
            keys=torch.cat([pad(s.keys, 3) for s in states], dim=1),
            values=torch.cat([pad(s.values, 3) for s in states], dim=1),
            mask=torch.cat([pad(s.mask, 1, False) for s in states], dim=0),
            z=None if any(z is None for z in zs) else torch.cat(zs, dim=0),  # type: ignore[arg-type]
        )


@dataclass
class GPOOutput:
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

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, C = t.shape
        return t.view(B, N, self.n_heads, C // self.n_heads).transpose(1, 2)  # [B, H, N, C/H]

    def _finish(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Residual attention output a [B, H, N, C/H] into h, then the feed-forward block."""
        B, N, C = h.shape
        h = h + self.dropout(self.proj(a.transpose(1, 2).reshape(B, N, C)))
        return h + self.dropout(self.ff(self.norm2(h)))

    def forward(self, h: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        # h: [B, N, C]; attend: [B, 1, 1, K] bool (K <= N), True where key position k < K is a context token.
        # Keys at positions >= K are never attended to (no context token there), so they are not computed.
        C, K = h.shape[-1], attend.shape[-1]
        q, k, v = (self._heads(t) for t in self.qkv(self.norm1(h)).split(C, dim=-1))
        return self._finish(h, F.scaled_dot_product_attention(q, k[:, :, :K], v[:, :, :K], attn_mask=attend))

    def encode_context(self, h: torch.Tensor, attend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer over context tokens only: (new h, keys, values), keys/values [B, H, Nc, C/H].

        The keys and values are those every token (context or target) attends to in `forward`.
        """
        C = h.shape[-1]
        q, k, v = (self._heads(t) for t in self.qkv(self.norm1(h)).split(C, dim=-1))
        return self._finish(h, F.scaled_dot_product_attention(q, k, v, attn_mask=attend)), k, v

    def attend_cached(self, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """The layer for target tokens h [B, Nt, C] against cached context keys/values (no target-target terms)."""
        C = h.shape[-1]
        q = self._heads(F.linear(self.norm1(h), self.qkv.weight[:C], self.qkv.bias[:C]))
        return self._finish(h, F.scaled_dot_product_attention(q, k, v, attn_mask=attend))


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
        assert cfg.kind in KINDS, f"unknown kind {cfg.kind!r} (one of {KINDS})"
        assert cfg.prior_readout in ("none", "mean", "ridge"), f"unknown prior_readout {cfg.prior_readout!r}"
        assert cfg.comparison_head in ("pair", "score"), f"unknown comparison_head {cfg.comparison_head!r}"
        assert (
            cfg.kind != "comparison"
            or cfg.prior_readout == "none"
            or (cfg.comparison_head == "score" and cfg.prior_readout == "ridge")
        ), "comparisons take the ridge readout with the score head only"
        if cfg.prior_readout != "none":
            assert cfg.prior_feature is not None, "a prior readout needs prior_feature"
            assert cfg.prior_feature + 2 + cfg.prior_rank <= cfg.dim_x, "prior block runs past dim_x"
        if cfg.prior_readout == "ridge":
            assert cfg.prior_rank > 0, "the ridge readout needs prior_rank > 0"
            self.log_ridge = nn.Parameter(torch.tensor(math.log(cfg.ridge_init)))
            if cfg.kind == "comparison":
                self.log_beta = nn.Parameter(torch.tensor(math.log(cfg.pair_beta_init)))
            # the network starts as the ridge estimate exactly and learns corrections to it
            with torch.no_grad():
                self.head[-1].weight[0].zero_()
                self.head[-1].bias[0].zero_()

    @torch.no_grad()
    def set_constant_std(self, std: float) -> None:
        """Make the predicted std this constant for every token (the head's std output no longer depends on the
        token): what an untrained network's ridge readout serves with, its std set to the readout's residual
        spread instead of whatever the random head gives."""
        assert std > self.cfg.min_std, f"std must exceed min_std {self.cfg.min_std}"
        last = self.head[-1]
        assert isinstance(last, nn.Linear)
        last.weight[1].zero_()
        last.bias[1] = math.log(math.expm1(std - self.cfg.min_std))  # inverse softplus

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardisation statistics of the training features (std floored to avoid blow-ups)."""
        assert mean.shape == (self.cfg.dim_x,) and std.shape == (self.cfg.dim_x,), "stats must be [dim_x]"
        self.x_mean.copy_(mean)
        self.x_std.copy_(std.clamp_min(1e-6))

    def _tokens(self, x: torch.Tensor, y_in: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, N, C] of features x [B, N, Dx] joined with input preferences y_in [B, N]."""
        return self.embed(torch.cat([(x - self.x_mean) / self.x_std, y_in.unsqueeze(-1)], dim=-1))

    def encode_tokens(self, batch: GPOBatch) -> torch.Tensor:
        """Token embeddings [B, N, C]: standardised x joined with y (y zeroed outside the context)."""
        return self._tokens(batch.x, torch.where(batch.is_context, batch.y, torch.zeros_like(batch.y)))

    def forward(self, batch: GPOBatch) -> GPOOutput:
        assert bool(batch.is_context.any(dim=1).all()), "every row needs at least one context item"
        h = self.encode_tokens(batch)  # [B, N, C]
        # keys = context tokens only; positions after the last context token of every row hold none
        n_keys = int(batch.is_context.any(dim=0).nonzero().max()) + 1
        attend = batch.is_context[:, None, None, :n_keys]  # [B, 1, 1, K]
        for layer in self.layers:
            h = layer(h, attend)
        prior = None
        if self.cfg.prior_readout != "none":
            z = self._ridge_z(batch.x, batch.y, batch.is_context) if self.cfg.prior_readout == "ridge" else None
            prior = self._prior_logits(batch.x, z)
        return self._readout(h, prior, batch.question, batch.is_target)

    def _readout(
        self, h: torch.Tensor, prior: torch.Tensor | None, question: torch.Tensor, is_target: torch.Tensor
    ) -> GPOOutput:
        out = self.head(self.norm(h))  # [B, N, 2]
        logits, raw_std = out.unbind(-1)
        if prior is not None:
            logits = logits + prior
        if self.cfg.kind == "choice":
            mean = segment_softmax(logits, question, is_target)
        elif self.cfg.kind == "rating":
            mean = logits.masked_fill(~is_target, 0.0)
        else:  # comparison
            mean = torch.sigmoid(logits).masked_fill(~is_target, 0.0)
        std = self.cfg.min_std + F.softplus(raw_std)
        return GPOOutput(mean=mean, std=std.masked_fill(~is_target, 1.0), logits=logits)

    # ------------------------------------------------------------------ cached context (serving)
    #
    # Context tokens attend only to context tokens, so their per-layer keys and values, and the ridge
    # solution of the prior readout, do not depend on the targets: `encode_context` computes them once per
    # context and `predict_targets` runs only the target tokens against them. The two together equal
    # `forward` on the joined episode (tested to 1e-5).

    def encode_context(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> ContextState:
        """Context features x [B, Nc, Dx], preferences y [B, Nc], mask [B, Nc] (False = padding)."""
        assert bool(mask.any(dim=1).all()), "every row needs at least one context item"
        y = torch.where(mask, y, torch.zeros_like(y))
        h = self._tokens(x, y)
        attend = mask[:, None, None, :]
        keys, values = [], []
        for layer in self.layers:
            h, k, v = layer.encode_context(h, attend)
            keys.append(k)
            values.append(v)
        z = self._ridge_z(x, y, mask) if self.cfg.prior_readout == "ridge" else None
        return ContextState(keys=torch.stack(keys), values=torch.stack(values), mask=mask, z=z)

    def predict_targets(
        self, state: ContextState, x: torch.Tensor, question: torch.Tensor, mask: torch.Tensor
    ) -> GPOOutput:
        """Targets x [B, Nt, Dx] with question ids [B, Nt] and mask [B, Nt] against an encoded context."""
        h = self._tokens(x, torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device))
        attend = state.mask[:, None, None, :]
        for i, layer in enumerate(self.layers):
            h = layer.attend_cached(h, state.keys[i], state.values[i], attend)
        prior = self._prior_logits(x, state.z) if self.cfg.prior_readout != "none" else None
        return self._readout(h, prior, question, mask)

    # ------------------------------------------------------------------ population-prior readout

    def _ridge_z(self, x: torch.Tensor, y: torch.Tensor, is_context: torch.Tensor) -> torch.Tensor:
        """[B, k] ridge solution of the context residuals y - mean on the prior loadings (known items only)."""
        cfg = self.cfg
        if cfg.kind == "comparison":
            return self._pair_z(x, y, is_context)
        assert cfg.prior_feature is not None
        p = cfg.prior_feature
        flag = x[..., p]  # 1: the item's own prior; TEXT_FLAG (in (0, 1)): read from its text; 0: none
        load = x[..., p + 2 : p + 2 + cfg.prior_rank]  # [B, N, k]
        weight = torch.where(flag >= 1.0, torch.ones_like(flag), (flag > 0).to(flag.dtype) * cfg.text_weight)
        w = is_context.to(load.dtype) * weight  # [B, N] context items with a prior, an own one weighing 1
        resid = (y - x[..., p + 1]) * w  # [B, N]
        gram = torch.einsum("bnk,bnj->bkj", load * w.unsqueeze(-1), load)  # [B, k, k]
        eye = torch.eye(cfg.prior_rank, dtype=load.dtype, device=load.device)
        return torch.linalg.solve(gram + self.log_ridge.exp() * eye, torch.einsum("bnk,bn->bk", load, resid))

    def _pair_z(self, x: torch.Tensor, y: torch.Tensor, is_context: torch.Tensor) -> torch.Tensor:
        """[B, k] taste of a comparison context: one Newton step from 0 of the ridge-regularised logistic regression
        of the context pairs' labels y on their loading differences (x of a pair token is x_a - x_b), with
        beta * (mean_a - mean_b) as the offset."""
        cfg = self.cfg
        assert cfg.prior_feature is not None
        p = cfg.prior_feature
        diff = x[..., p + 2 : p + 2 + cfg.prior_rank]  # [B, N, k]
        base = torch.sigmoid(self.log_beta.exp() * x[..., p + 1])  # [B, N] P(a > b) under the mean alone
        w = is_context.to(diff.dtype)
        curvature = base * (1.0 - base) * w
        hess = torch.einsum("bnk,bnj->bkj", diff * curvature.unsqueeze(-1), diff)  # [B, k, k]
        eye = torch.eye(cfg.prior_rank, dtype=diff.dtype, device=diff.device)
        grad = torch.einsum("bnk,bn->bk", diff, (y - base) * w)
        return torch.linalg.solve(hess + self.log_ridge.exp() * eye, grad)

    def _prior_logits(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """[B, N] each item's base score: the population mean (plus loadings @ z for the ridge readout), as a
        log-probability for choices, as a normalised score for ratings, and as a logit (beta * mean + loadings @ z)
        for a comparison's responses; 0 for items without a prior."""
        cfg = self.cfg
        assert cfg.prior_feature is not None
        p = cfg.prior_feature
        known = x[..., p] > 0.0  # [B, N] an own or a text prior
        base = x[..., p + 1]  # [B, N] population mean
        if cfg.kind == "comparison":  # z is in logit units already
            base = self.log_beta.exp() * base
        if z is not None:
            base = base + torch.einsum("bnk,bk->bn", x[..., p + 2 : p + 2 + cfg.prior_rank], z)
        if cfg.kind == "choice":
            return torch.where(known, base.clamp_min(cfg.prior_floor).log(), torch.zeros_like(base))
        return torch.where(known, base, torch.zeros_like(base))

    def prior_logits(self, batch: GPOBatch) -> torch.Tensor:
        """[B, N] log of each item's base probability under the prior readout; 0 for unknown items."""
        z = self._ridge_z(batch.x, batch.y, batch.is_context) if self.cfg.prior_readout == "ridge" else None
        return self._prior_logits(batch.x, z)

    def loss(self, batch: GPOBatch, pred: GPOOutput | None = None) -> torch.Tensor:
        """Per target token, summed per row, averaged over rows: Gaussian NLL of the true y (choices, ratings),
        or binary cross-entropy of the preference probability (comparisons)."""
        pred = self(batch) if pred is None else pred
        if self.cfg.kind == "comparison":
            nll = F.binary_cross_entropy_with_logits(pred.logits, batch.y.clamp(0.0, 1.0), reduction="none")
        else:
            nll = 0.5 * ((batch.y - pred.mean) / pred.std) ** 2 + pred.std.log() + 0.5 * math.log(2 * math.pi)
        nll = nll.masked_fill(~batch.is_target, 0.0)
        return nll.sum(dim=1).mean()
