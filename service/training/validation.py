"""Checkpoint choice for group meta-training: validation groups, validation questions, and the score.

A checkpoint must do well on what serving meets: known questions (with population-prior features) and questions
nobody answered in training (a user's own). Both are measured on validation groups (taken from the training groups,
never test groups), and the new-question part on *validation questions*: a share of the training questions kept
out of every training episode, so a checkpoint cannot score there by having memorised them (with the questions the
training groups answered as "new" targets, the validation score rose 0.822 -> 0.945 during training while truly
held-out questions scored 0.817: it rewarded memorising).

The score is the blend (1 - w) * known + w * new, under one rule: a checkpoint whose known-question alignment is
below the untrained model's (the closed-form prior readout) by more than `tolerance_se` standard errors is not
eligible. The readout is what the transformer corrects; a correction that makes known questions worse is not
kept for the sake of the new-question part (measured on ragged OpinionQA: meta-training lowered known-question
validation 0.967 -> 0.955 while the blend still chose it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from service.gpo.batch import Episode
from service.gpo.features import FeatureSpec
from service.training.items import ItemTable

# A checkpoint that breaks the known-question rule scores this much below its blend: never above an eligible one.
INELIGIBLE_PENALTY = 1.0
# Ridge strengths the untrained readout is tried with (on the validation groups' known questions) before training.
RIDGE_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)
MIN_VALIDATION_QUESTIONS = 5  # fewer held-out questions than this: no new-question validation


def hold_out_questions(scorable: np.ndarray, share: float, seed: int) -> np.ndarray:
    """The validation questions: `share` of the scorable training questions (indices, sorted), drawn with `seed`;
    empty when that is fewer than MIN_VALIDATION_QUESTIONS."""
    n = int(round(share * len(scorable)))
    if n < MIN_VALIDATION_QUESTIONS or n >= len(scorable):
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed + 30_000)
    return np.sort(rng.choice(np.asarray(scorable), size=n, replace=False))


@dataclass
class ValidationEpisodes:
    """Fixed validation episodes: known-question targets, and the same contexts with validation-question targets
    (their prior features removed, flag 0: new questions)."""

    known: list[Episode] = field(default_factory=list)
    known_tq: list[np.ndarray] = field(default_factory=list)
    new: list[Episode] = field(default_factory=list)
    new_tq: list[np.ndarray] = field(default_factory=list)
    left_out: list[tuple[str, int]] = field(default_factory=list)  # (group, usable questions) of groups left out


def build_validation_episodes(
    table: ItemTable,
    x: dict[str, torch.Tensor],
    y: dict[str, torch.Tensor],
    pools: dict[str, np.ndarray],
    val_groups: Sequence[str],
    scorable: np.ndarray,
    held_out: np.ndarray,
    spec: FeatureSpec,
    n_context: int,
    draws: int,
    seed: int,
    make_episode: Callable[[ItemTable, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray], Episode],
    text: dict[str, torch.Tensor] | None = None,
) -> ValidationEpisodes:
    """Per validation group, `draws` contexts of `n_context` scorable training questions it answered (never a
    validation question); known targets: every other scorable training question it answered; new targets: the
    validation questions it answered, their own prior hidden (with `text`: the group's out-of-fold text prior
    features [I, 2 + k] shown instead, else zeros). A group with fewer than n_context + 1 usable questions is left
    out."""
    rng = np.random.default_rng(seed + 10_000)
    out = ValidationEpisodes()
    held = set(held_out.tolist())
    for g in val_groups:
        answered = scorable[np.isin(scorable, pools[g])]
        usable = np.array([q for q in answered if q not in held], dtype=np.int64)
        if len(usable) < min(n_context + 1, len(scorable) - len(held)):
            out.left_out.append((g, len(usable)))
            continue
        new_tq = np.array([q for q in answered if q in held], dtype=np.int64)
        for _ in range(draws):
            ctx = rng.choice(usable, size=min(n_context, len(usable) - 1), replace=False)
            in_ctx = set(ctx.tolist())
            tgt = np.array([q for q in answered if q not in in_ctx], dtype=np.int64)
            out.known.append(make_episode(table, x[g], y[g], ctx, tgt))
            out.known_tq.append(tgt)
            if len(new_tq):
                e = make_episode(table, x[g], y[g], ctx, new_tq)
                if text is None:
                    e.x[~e.is_context, spec.prior_slice] = 0.0
                else:
                    e.x[~e.is_context, spec.prior_slice] = text[g][torch.from_numpy(table.rows(new_tq))]
                out.new.append(e)
                out.new_tq.append(new_tq)
    return out


@dataclass
class CheckpointScore:
    """The validation score of a model (call it with the per-question alignments of the known and new episodes);
    the first call (the untrained model) sets the known-question floor."""

    new_weight: float
    tolerance_se: float = 1.0
    floor: float | None = None
    parts: dict[str, float] = field(default_factory=dict)

    def __call__(self, known_scores: Sequence[float], new_scores: Sequence[float]) -> float:
        known = float(np.mean(known_scores))
        se = float(np.std(known_scores) / np.sqrt(max(len(known_scores), 1)))
        if self.floor is None:
            self.floor = known - self.tolerance_se * se
        self.parts.clear()
        self.parts["val_known"] = known
        score = known
        if len(new_scores) and self.new_weight > 0:
            new = float(np.mean(new_scores))
            self.parts["val_new"] = new
            score = (1 - self.new_weight) * known + self.new_weight * new
        eligible = known >= self.floor
        self.parts["val_eligible"] = float(eligible)
        return score if eligible else score - INELIGIBLE_PENALTY


@torch.no_grad()
def choose_readout_ridge(model: torch.nn.Module, known_alignment: Callable[[], float], grid=RIDGE_GRID) -> float:
    """Set the ridge readout's strength (`model.log_ridge`) to the grid value whose untrained model has the best
    known-question validation alignment (`known_alignment()`, the validation groups only), and return it.

    Training then starts from the best closed-form readout, as the latent-factor baseline's ridge is chosen on its
    training groups: the transformer learns corrections to it, and the known-question floor (CheckpointScore) is
    that readout's score. The strength stays a learned parameter."""
    scores = []
    for lam in grid:
        model.log_ridge.fill_(float(np.log(lam)))
        scores.append(known_alignment())
    best = float(grid[int(np.argmax(scores))])
    model.log_ridge.fill_(float(np.log(best)))
    return best


TEXT_WEIGHT_GRID = (0.5, 0.2, 0.1, 0.05, 0.02)


@torch.no_grad()
def choose_text_weight(
    model: torch.nn.Module, text_context_alignment: Callable[[], float], grid=TEXT_WEIGHT_GRID
) -> float:
    """Set `model.cfg.text_weight` (the weight of a text-read context item in the readout's ridge fit) to the grid
    value whose untrained model has the best alignment on episodes whose context questions show their text prior
    (`text_context_alignment()`, training groups only), and return it."""
    scores = []
    for w in grid:
        model.cfg.text_weight = float(w)
        scores.append(text_context_alignment())
    best = float(grid[int(np.argmax(scores))])
    model.cfg.text_weight = best
    return best
