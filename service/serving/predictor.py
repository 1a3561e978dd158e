"""Predictor: a checkpoint's GPO predictions for a group's context and new items (no web, no database).

An item is one question's options (or one prompt's responses); its feature vector is what the checkpoint's
FeatureSpec says (service.gpo.features: the base LLM's embedding of the item text and the prior features, from
the checkpoint's prior bank for known items, else from its content basis and reward model). Embeddings come from
the caller (the API gets them from its cache or the worker), so this module never loads the LLM itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service.embedder.prompts import TEMPLATE_VERSION, format_items, format_response_item
from service.gpo.batch import Episode, collate
from service.gpo.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from service.gpo.features import ContentBasis, FeatureSpec, RewardModel, TextPrior
from service.gpo.matching import QuestionMatcher
from service.gpo.model import ContextState, GPOOutput
from service.gpo.prior import question_key
from service.serving.new_questions import NewQuestionPriors, PriorBasis


class EmbedderMismatch(CheckpointError):
    """The checkpoint was trained on another base LLM, pooling, prompt template or embedding size."""


@dataclass
class Item:
    """One question with its options and the embedding of each option's text [n_options, dim]."""

    question: str
    options: Sequence[str]
    embeddings: np.ndarray | None = None  # None when the checkpoint uses no embedding


@dataclass
class AnsweredItem(Item):
    """An item with the group's answer: a context item."""

    distribution: np.ndarray | None = None  # [n_options], sums to 1


@dataclass
class ItemPrediction:
    distribution: np.ndarray  # [n_options] float64: sums to 1 (choice); [1] the normalised score (rating)
    std: np.ndarray  # [n_options]


class Predictor:
    """Wraps a loaded checkpoint; thread-safe for concurrent `predict` calls (inference only)."""

    def __init__(self, ckpt: Checkpoint, device: torch.device | str = "cpu"):
        self.ckpt = ckpt
        self.device = torch.device(device)
        self.model = ckpt.model.to(self.device).eval()
        feats = ckpt.meta.get("features")
        if feats is None:
            raise CheckpointError(f"{ckpt.path}: config.json has no 'features' section")
        self.spec = FeatureSpec(**feats)
        # a comparison model with a score head reads one more column: 1 for a pair token, 0 for a single response
        self.score_head = self.model.cfg.kind == "comparison" and self.model.cfg.comparison_head == "score"
        if self.spec.dim_x + int(self.score_head) != self.model.cfg.dim_x:
            raise CheckpointError(
                f"{ckpt.path}: feature spec gives dim_x {self.spec.dim_x}, the model has {self.model.cfg.dim_x}"
            )
        if self.spec.use_prior and ckpt.bank is None:
            raise CheckpointError(f"{ckpt.path}: the features use a population prior but no prior bank is stored")
        self.embedder_meta: dict = ckpt.meta.get("embedder", {})
        self.kind = self.model.cfg.kind
        # Rating and comparison models: items outside the prior bank get content loadings from their embedding and,
        # as their mean, the checkpoint's reward model's estimate from the embedding (older checkpoints: the
        # training people's mean score).
        self.content = ContentBasis.from_checkpoint(ckpt.extra, ckpt.meta)
        self.reward = RewardModel.from_checkpoint(ckpt.extra)
        # Choice models: a question outside the prior bank gets prior features read from its options' text (flag
        # TEXT_FLAG) when the checkpoint stores a text prior (older checkpoints: flag 0 and zeros), and borrows its
        # nearest known questions' priors when it stores a matcher and a question encoder is attached
        # (`use_question_encoder`; otherwise exact matches only): service.serving.new_questions.
        self.new_questions = None
        if self.kind == "choice" and ckpt.bank is not None:
            matcher, text = QuestionMatcher.from_checkpoint(ckpt.extra), TextPrior.from_checkpoint(ckpt.extra)
            self.new_questions = NewQuestionPriors(ckpt.bank, matcher, text)
        self.global_mean = float(ckpt.meta.get("global_mean", 0.0))

    @classmethod
    def from_store(cls, store: Path, name: str, device: torch.device | str = "cpu") -> Predictor:
        """The latest version of checkpoint `name` under `store` (or an explicit version folder)."""
        return cls(load_checkpoint(Path(store) / name, device=device), device=device)

    # ------------------------------------------------------------------ identity and compatibility

    @property
    def model_version(self) -> str:
        return f"{self.ckpt.meta.get('name', 'unnamed')}/{self.ckpt.version}"

    @property
    def uses_embedding(self) -> bool:
        return self.spec.use_embedding

    @property
    def template_version(self) -> str:
        return self.embedder_meta.get("template_version", TEMPLATE_VERSION)

    def check_embedder(self, key_prefix: str, dim: int) -> None:
        """Refuse to serve with an embedder other than the one the checkpoint was trained on.

        `key_prefix` is the embedder's `model_id@revision|pooling|template` (see make_key_prefix).
        """
        if not self.uses_embedding:
            return
        want, want_dim = self.embedder_meta.get("key_prefix"), self.embedder_meta.get("dim")
        if want_dim is not None and int(want_dim) != int(dim):
            raise EmbedderMismatch(
                f"checkpoint {self.model_version} expects {want_dim}-dim embeddings from {want!r}; "
                f"the embedder gives {dim}-dim vectors ({key_prefix!r}). Serve it with the embedder it was "
                "trained on (GPO_EMBEDDER, GPO_POOLING) or train a checkpoint for this one (gpo train)."
            )
        if want is not None and want != key_prefix:
            raise EmbedderMismatch(
                f"checkpoint {self.model_version} was trained on embeddings {want!r}, but the embedder "
                f"is {key_prefix!r}. Serve it with the embedder it was trained on (GPO_EMBEDDER, "
                "GPO_EMBEDDER_REVISION, GPO_POOLING) or train a checkpoint for this one (gpo train)."
            )

    # ------------------------------------------------------------------ items -> features

    def item_texts(self, question: str, options: Sequence[str]) -> list[str]:
        """Texts to embed for one item of this checkpoint's kind: a choice question's options (the multiple-choice
        template), or the responses to a prompt of a rating or comparison item (the response template)."""
        if self.kind in ("rating", "comparison"):
            return self.response_texts(question, options)
        return self.choice_texts(question, options)

    @torch.inference_mode()
    def predict_pairs(self, context: Sequence[AnsweredItem], targets: Sequence[Item]) -> list[float]:
        """Comparison models: P(first response preferred) for each target pair, given context pairs. Items have
        two options (response a, response b) with their embeddings; a context item's distribution is [P(a), P(b)].
        Equals `predict_pairs_encoded(encode(context), targets)`, which is how it is computed."""
        if self.kind != "comparison":
            raise ValueError(f"{self.model_version} is a {self.kind} model, not a comparison one")
        return self.predict_pairs_encoded(self.encode(context), targets)

    def _pair_features(self, item: Item) -> np.ndarray:
        if len(item.options) != 2:
            raise ValueError("a comparison item has exactly two responses")
        return self.features(item)

    def _pair_tokens(self, items: Sequence[Item]) -> np.ndarray:
        """[n, dim_x] pair tokens: the difference of each pair's two responses' features (score head: then a 1)."""
        x = np.stack([f[0] - f[1] for f in map(self._pair_features, items)])
        return np.column_stack([x, np.ones(len(x))]) if self.score_head else x

    def predict_pairs_encoded(self, state: ContextState, targets: Sequence[Item]) -> list[float]:
        """P(a preferred) of each target pair against an encoded comparison context (see predict_pairs_many)."""
        return self.predict_pairs_many([(state, targets)])[0]

    @torch.inference_mode()
    def predict_pairs_many(self, requests: Sequence[tuple[ContextState, Sequence[Item]]]) -> list[list[float]]:
        """Per request (encoded comparison context, target pairs): P(a preferred) of each pair. One forward for all.

        Pair head: a target token is a pair and its output is P(a). Score head: a target token is one response
        (a 0 in the extra column), its output a score, and P(a) = sigmoid(s_a - s_b)."""
        if self.kind != "comparison":
            raise ValueError(f"{self.model_version} is a {self.kind} model, not a comparison one")
        if not requests:
            return []
        blocks: list[list[np.ndarray]] = []  # per request: one token per target question
        for _, targets in requests:
            if not targets:
                blocks.append([])
                continue
            if self.score_head:  # a, b of every target pair, each its own token
                singles = np.concatenate([self._pair_features(t) for t in targets])
                x = np.column_stack([singles, np.zeros(len(singles))])
            else:
                x = self._pair_tokens(targets)
            blocks.append([row[None] for row in x.astype(np.float32)])
        pred, placement = self._forward_blocks([state for state, _ in requests], blocks)
        out = []
        for (b, pos), (_, targets) in zip(placement, requests, strict=True):
            if self.score_head:
                s = pred.logits[b, pos : pos + 2 * len(targets)].double().cpu()
                out.append([float(v) for v in torch.sigmoid(s[0::2] - s[1::2]).numpy()])
            else:
                out.append([float(v) for v in pred.mean[b, pos : pos + len(targets)].double().cpu().numpy()])
        return out

    def choice_texts(self, question: str, options: Sequence[str]) -> list[str]:
        """Texts to embed for a multiple-choice question: one per option (the training template)."""
        return format_items(question, list(options))

    @staticmethod
    def response_texts(prompt: str, responses: Sequence[str]) -> list[str]:
        """Texts to embed for sampled responses to a prompt (the options of one question in best-of-n)."""
        return [format_response_item(prompt, r) for r in responses]

    @property
    def matcher(self) -> QuestionMatcher | None:
        return None if self.new_questions is None else self.new_questions.matcher

    @property
    def question_encoder(self) -> Callable[[str], np.ndarray] | None:
        return None if self.new_questions is None else self.new_questions.encoder

    def use_question_encoder(self, encode: Callable[[str], np.ndarray]) -> None:
        """Match questions outside the bank with `encode` (a `match_text` line -> its unit vector; the encoder the
        checkpoint's matcher was fitted with, `meta["matcher"]`)."""
        if self.new_questions is not None:
            self.new_questions.use_encoder(encode)

    def matched_rows(self, question: str, options: Sequence[str]) -> np.ndarray | None:
        """The bank rows of the known question this one borrows its prior from, or None (NewQuestionPriors)."""
        return None if self.new_questions is None else self.new_questions.matched_rows(question, options)

    def prior_basis(self, question: str, options: Sequence[str]) -> PriorBasis:
        """What this choice question's prior features come from (PriorBasis); `none` for other kinds."""
        if self.new_questions is None or not self.spec.use_prior:
            return PriorBasis("none")
        return self.new_questions.basis(question, options, self.spec.use_embedding)

    def is_known(self, question: str, options: Sequence[str]) -> bool:
        """Whether the question (with exactly these options) is in the checkpoint's prior bank."""
        bank = self.ckpt.bank
        return bank is not None and bank.lookup(question_key(question, options), len(options)) is not None

    def features(self, item: Item) -> np.ndarray:
        """[n_options, dim_x] features of one question's options."""
        n = len(item.options)
        emb, prior = None, None
        if self.spec.use_embedding:
            if item.embeddings is None:
                raise ValueError("this checkpoint needs the embeddings of every item")
            emb = np.asarray(item.embeddings, dtype=np.float32)
            if emb.shape != (n, self.spec.emb_dim):
                raise ValueError(f"embeddings must be [{n}, {self.spec.emb_dim}], got {list(emb.shape)}")
        if self.spec.use_prior:
            bank = self.ckpt.bank
            assert bank is not None
            if self.new_questions is not None:  # choice
                rows = self.new_questions.known_rows(item.question, item.options)
                if rows is not None:
                    prior = bank.prior.features(rows)
                else:
                    prior = self.new_questions.features(item.question, item.options, emb)
            else:  # rating / comparison: every response is its own item (prompt + response)
                vecs = emb if emb is not None else np.zeros((n, 1), dtype=np.float32)
                prior = np.concatenate(
                    [self._response_prior(item.question, o, vecs[j]) for j, o in enumerate(item.options)]
                )
        return self.spec.join(emb, prior)

    def _response_prior(self, prompt: str, response: str, emb: np.ndarray) -> np.ndarray:
        """[1, 2 + k] prior features of one response: from the bank when it is a training item; otherwise, with a
        content basis, its content loadings and, as its mean, the reward model's estimate (or the population's
        mean score) (flag 1); else the unknown encoding."""
        bank = self.ckpt.bank
        assert bank is not None
        rows = bank.lookup(question_key(prompt, [response]), 1)
        if rows is not None:
            return bank.prior.features(rows)
        if self.content is None or not self.spec.use_embedding:
            return np.zeros((1, 2 + bank.prior.rank), dtype=np.float32)
        load = self.content.loadings(emb[None, :])
        mean = self.global_mean if self.reward is None else float(self.reward.score(emb))
        return np.concatenate([np.ones((1, 1)), np.full((1, 1), mean), load], axis=1).astype(np.float32)

    # ------------------------------------------------------------------ prediction

    def episode(self, context: Sequence[AnsweredItem], targets: Sequence[Item]) -> Episode:
        """One group's episode: every context option, then every target option (question ids 0..T-1)."""
        if not context:
            raise ValueError("a prediction needs at least one context item")
        xs, ys, qid = [], [], []
        for c in context:
            if c.distribution is None:
                raise ValueError("context items need a distribution")
            xs.append(self.features(c))
            ys.append(np.asarray(c.distribution, dtype=np.float32))
            qid.append(np.zeros(len(c.options), dtype=np.int64))
        n_ctx = sum(len(c.options) for c in context)
        for j, t in enumerate(targets):
            xs.append(self.features(t))
            ys.append(np.zeros(len(t.options), dtype=np.float32))
            qid.append(np.full(len(t.options), j, dtype=np.int64))
        n = n_ctx + sum(len(t.options) for t in targets)
        is_ctx = torch.zeros(n, dtype=torch.bool)
        is_ctx[:n_ctx] = True
        return Episode(
            x=torch.from_numpy(np.concatenate(xs)),
            y=torch.from_numpy(np.concatenate(ys)),
            is_context=is_ctx,
            question=torch.from_numpy(np.concatenate(qid)),
        )

    @torch.no_grad()
    def predict_many(
        self, requests: Sequence[tuple[Sequence[AnsweredItem], Sequence[Item]]]
    ) -> list[list[ItemPrediction]]:
        """Per request (context, targets): one prediction per target question, in order. One forward."""
        if not requests:
            return []
        episodes = [self.episode(c, t) for c, t in requests]
        batch = collate(episodes).to(self.device)
        pred = self.model(batch)
        mean, std = pred.mean.double().cpu().numpy(), pred.std.double().cpu().numpy()
        out = []
        for b, (ep, (_, targets)) in enumerate(zip(episodes, requests, strict=True)):
            n_ctx = int(ep.is_context.sum())
            preds, pos = [], n_ctx
            for t in targets:
                k = len(t.options)
                preds.append(self._prediction(mean[b, pos : pos + k], std[b, pos : pos + k]))
                pos += k
            out.append(preds)
        return out

    def _prediction(self, mean: np.ndarray, std: np.ndarray) -> ItemPrediction:
        """A choice question's distribution (renormalised against rounding), or a rating item's normalised score."""
        if self.kind == "choice":
            return ItemPrediction(distribution=mean / mean.sum(), std=std)
        return ItemPrediction(distribution=mean.copy(), std=std)

    def predict(self, context: Sequence[AnsweredItem], targets: Sequence[Item]) -> list[ItemPrediction]:
        """The full forward (context and targets together); equals `predict_encoded(encode(context), ...)`."""
        return self.predict_many([(context, targets)])[0]

    # ------------------------------------------------------------------ cached context

    @torch.inference_mode()
    def encode(self, context: Sequence[AnsweredItem]) -> ContextState:
        """The context encoded once: per-layer keys/values (and the ridge solution) its targets attend to."""
        if not context:
            raise ValueError("a prediction needs at least one context item")
        if self.kind == "comparison":  # pair tokens; y = P(a preferred)
            if any(c.distribution is None for c in context):
                raise ValueError("context items need a distribution")
            x = torch.from_numpy(self._pair_tokens(context).astype(np.float32))[None].to(self.device)
            y = torch.tensor([[float(np.asarray(c.distribution)[0]) for c in context]], device=self.device)
            return self.model.encode_context(x, y, torch.ones(y.shape, dtype=torch.bool, device=self.device))
        xs, ys = [], []
        for c in context:
            if c.distribution is None:
                raise ValueError("context items need a distribution")
            xs.append(self.features(c))
            ys.append(np.asarray(c.distribution, dtype=np.float32))
        x = torch.from_numpy(np.concatenate(xs))[None].to(self.device)
        y = torch.from_numpy(np.concatenate(ys))[None].to(self.device)
        return self.model.encode_context(x, y, torch.ones(y.shape, dtype=torch.bool, device=self.device))

    @torch.inference_mode()
    def predict_encoded(self, requests: Sequence[tuple[ContextState, Sequence[Item]]]) -> list[list[ItemPrediction]]:
        """Per request (encoded context, targets): one prediction per target question. One forward for all."""
        if not requests:
            return []
        blocks = [[self.features(t) for t in targets] for _, targets in requests]
        pred, placement = self._forward_blocks([state for state, _ in requests], blocks)
        mean, std = pred.mean.double().cpu().numpy(), pred.std.double().cpu().numpy()
        out = []
        for (b, pos), (_, targets) in zip(placement, requests, strict=True):
            preds = []
            for t in targets:
                k = len(t.options)
                preds.append(self._prediction(mean[b, pos : pos + k], std[b, pos : pos + k]))
                pos += k
            out.append(preds)
        return out

    def _forward_blocks(
        self, states: Sequence[ContextState], blocks: Sequence[Sequence[np.ndarray]]
    ) -> tuple[GPOOutput, list[tuple[int, int]]]:
        """One forward of target tokens against encoded contexts: request i's tokens are `blocks[i]`, one array
        [k, dim_x] per target question (its options). Returns the model's output and, per request, (row, first
        token). Requests on the same encoded context share one row: targets never attend to each other, so a row
        holding several requests' targets gives each exactly what its own row would (and the context's keys and
        values are not copied once per request)."""
        rows: dict[int, int] = {}
        row_states: list[ContextState] = []
        placement: list[tuple[int, int]] = []
        row_feats: list[list[np.ndarray]] = []
        for state, feats in zip(states, blocks, strict=True):
            r = rows.setdefault(id(state), len(row_states))
            if r == len(row_states):
                row_states.append(state)
                row_feats.append([])
            placement.append((r, sum(f.shape[0] for f in row_feats[r])))
            row_feats[r].extend(feats)
        B = len(row_states)
        N = max(max(sum(f.shape[0] for f in fs) for fs in row_feats), 1)
        x = np.zeros((B, N, self.model.cfg.dim_x), dtype=np.float32)
        q = np.zeros((B, N), dtype=np.int64)
        m = np.zeros((B, N), dtype=bool)
        for b, fs in enumerate(row_feats):
            pos = 0
            for j, f in enumerate(fs):
                k = f.shape[0]
                x[b, pos : pos + k], q[b, pos : pos + k], m[b, pos : pos + k] = f, j, True
                pos += k
        pred = self.model.predict_targets(
            ContextState.stack(row_states),
            torch.from_numpy(x).to(self.device),
            torch.from_numpy(q).to(self.device),
            torch.from_numpy(m).to(self.device),
        )
        return pred, placement

    # ------------------------------------------------------------------ encoded contexts as flat arrays

    def state_to_array(self, state: ContextState) -> np.ndarray:
        """One group's state as a flat float32 array (keys, values, then the ridge solution), for a cache."""
        assert state.batch_size == 1, "one group's state at a time"
        parts = [state.keys.reshape(-1), state.values.reshape(-1)]
        if state.z is not None:
            parts.append(state.z.reshape(-1))
        return torch.cat(parts).to(torch.float32).cpu().numpy()

    def state_from_array(self, array: np.ndarray) -> ContextState:
        """Inverse of `state_to_array` for this checkpoint; ValueError when the size does not fit it."""
        cfg = self.model.cfg
        n_z = cfg.prior_rank if cfg.prior_readout == "ridge" else 0
        per_token = 2 * cfg.n_layers * cfg.d_model
        flat = np.asarray(array, dtype=np.float32).reshape(-1)
        n_ctx, rest = divmod(flat.size - n_z, per_token)
        if rest or n_ctx < 1:
            raise ValueError(f"an encoded context of {flat.size} floats does not fit checkpoint {self.model_version}")
        t = torch.from_numpy(flat.copy()).to(self.device)
        half = cfg.n_layers * cfg.d_model * n_ctx
        shape = (cfg.n_layers, 1, cfg.n_heads, n_ctx, cfg.d_model // cfg.n_heads)
        return ContextState(
            keys=t[:half].view(shape),
            values=t[half : 2 * half].view(shape),
            mask=torch.ones(1, n_ctx, dtype=torch.bool, device=self.device),
            z=t[2 * half :].view(1, n_z) if n_z else None,
        )
