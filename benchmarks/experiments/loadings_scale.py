"""How large are soft borrowing's loadings against the questions' own (issue 16)? A training-side diagnostic: no
held-out answer reaches it.

    .venv/bin/python benchmarks/experiments/loadings_scale.py [--seeds 0,1,2] [--held-out]

Each known training question of the new-questions split's training side (60%), as a new question gets its prior
(neighbour_vectors.as_new_questions; the rule fitted as served): its out-of-fold text estimate, its neighbours' blend
and the served mix of the two, against its own prior's loadings, per principal direction (column): r, the squared
error relative to predicting 0, and the least-squares scale of the served mix (fitted on one half of the option rows,
applied to the other, both ways), with the pooled r and relative error before and after that scale.

--held-out then scores the new-questions protocol (served configuration: matcher, soft borrowing "all", closed-form
readout) with every new question's blended loadings multiplied by the seed's pooled training-side scale (all columns,
all rows): is their size what holds new-question alignment back? The scale is chosen before any held-out answer is read.
"""

import argparse

import numpy as np
import torch
from neighbour_vectors import as_new_questions, fit_training_side  # the sibling script (run from the checkout's root)

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.embedder.sentence import SentenceEncoder
from service.gpo.features import FeatureSpec
from service.gpo.matching import QuestionMatcher
from service.training.evaluate import EvalConfig
from service.training.fit import TrainConfig
from service.training.held_out import run_new_question_protocol
from service.training.matching import with_question_vectors
from service.training.text_prior import prior_targets


def held_out(ds, table, seed: int, scale: float) -> None:
    """The new-questions protocol of `seed` with the blended loadings of every new question times `scale`."""
    original = QuestionMatcher.blended_features

    def scaled(self, prior, text, vector, option_vectors):
        out = np.array(original(self, prior, text, vector, option_vectors), copy=True)
        out[:, 2:] *= scale  # columns: flag, mean, loadings
        return out

    QuestionMatcher.blended_features = scaled
    try:
        spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
        tcfg = TrainConfig(max_steps=0, progress=False, neighbour_blend="all")
        for r in run_new_question_protocol(ds, table, spec, tcfg, EvalConfig(seeds=[seed], progress=False)):
            if r["method"] == "gpo":
                print(
                    f"  held out, loadings x {scale:.3f}, {r['subset']:>16}: alignment {r['alignment']:.4f} "
                    f"contrast r {r.get('contrast_r', float('nan')):+.3f}",
                    flush=True,
                )
    finally:
        QuestionMatcher.blended_features = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--held-out", action="store_true", help="also score the protocol with the pooled scale")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ds, _, _ = load_group_dataset(None)
    base, _ = embed_group_dataset(ds)
    table = with_question_vectors(base, SentenceEncoder())
    for seed in (int(s) for s in args.seeds.split(",")):
        side = fit_training_side(table, ds, seed)
        rule = side.bank.blend
        parts: dict[str, list[np.ndarray]] = {"text": [], "neighbours": [], "served": [], "own": []}
        for _, _, rows, text, others, sims in as_new_questions(table, side):
            order = np.argsort(-sims, kind="stable")[: rule.k]
            lent = [
                prior_targets(table, side.priors.full, side.bank.rows(int(others[o]), table.ovec[rows])) for o in order
            ]
            near = np.tensordot(rule.weights(sims[order]), np.stack(lent).astype(np.float64), axes=1)
            parts["text"].append(text[:, 1:])
            parts["neighbours"].append(near[:, 1:])
            parts["served"].append(rule.mix(text, near, float(sims.max()))[:, 1:])
            parts["own"].append(prior_targets(table, side.priors.full, rows)[:, 1:])
        est = {name: np.concatenate(x) for name, x in parts.items()}
        own = est.pop("own")
        var = (own**2).sum(0)
        print(f"seed {seed}: share of the loadings' variance per column {np.round(var / var.sum(), 3).tolist()}")
        for name, e in est.items():
            r = [float(np.corrcoef(e[:, c], own[:, c])[0, 1]) for c in range(own.shape[1])]
            rel = ((e - own) ** 2).sum(0) / var
            print(f"  {name:>10} r per column {np.round(r, 3).tolist()}  relative error {np.round(rel, 3).tolist()}")
        served = est["served"]
        half = np.random.default_rng(seed).integers(0, 2, len(own))
        scaled = np.empty_like(served)
        for h in (0, 1):
            fit, use = half != h, half == h
            scale = (served[fit] * own[fit]).sum(0) / (served[fit] ** 2).sum(0)
            scaled[use] = served[use] * scale
            print(f"  least-squares scale of the served mix, fitted on half {1 - h}: {np.round(scale, 2).tolist()}")
        for name, e in (("served", served), ("scaled", scaled)):
            r = float(np.corrcoef(e.ravel(), own.ravel())[0, 1])
            print(f"  {name:>10} pooled r {r:.4f}  relative error {((e - own) ** 2).sum() / (own**2).sum():.4f}")
        pooled = float((served * own).sum() / (served**2).sum())
        print(f"  pooled least-squares scale (all rows and columns): {pooled:.3f}")
        if args.held_out:
            held_out(ds, table, seed, pooled)


if __name__ == "__main__":
    main()
