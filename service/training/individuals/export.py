"""A trained individuals model as a servable checkpoint: model, feature spec, item prior bank, content basis."""

from __future__ import annotations

import numpy as np

from service.gpo.checkpoint import Checkpoint, PriorBank
from service.gpo.prior import question_key
from service.training.individuals.priors import fit_content_basis
from service.training.individuals.train import IndividualModel
from service.training.ratings import RatingsDataset


def rating_checkpoint(
    result: IndividualModel, ds: RatingsDataset, emb: np.ndarray, embedder_meta: dict, extra_meta: dict | None = None
) -> Checkpoint:
    """A servable rating (or comparison: pair classifier) checkpoint: the model, its feature spec, the prior bank
    of the dataset's items (keyed by prompt + item text, as a served item is: each with the training prior's mean,
    so with prior_mean "shrunk" a known item's training ratings shrunk towards its text estimate), and the content
    basis that gives any other item its loadings, with the reward model's estimate as its mean (or, for a model
    whose prior mean is the item mean, the training people's mean score)."""
    assert result.kind in ("rating", "comparison", "comparison_bt") and result.prior is not None, (
        "a rating or comparison model"
    )
    rows = {question_key(ds.prompt, [it.text]): (i, 1) for i, it in enumerate(ds.items)}
    known = result.known
    basis = fit_content_basis(emb, result.spec.prior_rank)
    extra, basis_meta = basis.to_checkpoint()
    meta = {
        "kind": result.model.cfg.kind,
        "embedder": embedder_meta,
        "features": result.spec.to_dict(),
        "global_mean": float(result.prior.mean[known].mean()) if known.any() else 0.5,
        **basis_meta,
        "scale": list(ds.scale),
        "prompt": ds.prompt,
        **(extra_meta or {}),
    }
    if result.reward is not None:
        extra.update(result.reward.to_checkpoint())
    metrics = {
        "best_val_pairwise": result.best_val,
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "wall_s": result.wall_s,
        "stopped_by": result.stop.reason if result.stop else None,
        "shortfall": result.shortfall,
        "prior_mean": result.prior_mean,
        "prior_cv": result.prior_choice,
        "history": result.history,
    }
    return Checkpoint(result.model, meta, PriorBank(result.prior, rows), metrics, extra=extra)
