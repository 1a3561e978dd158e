"""What to expect of a new question by how near the nearest known question is (issue 16; what `/predict` reports as
`nearest_similarity` and `borrowed_share`): the new-questions protocol (60% split, 20 context questions, seeds 0-2,
served setup: closed-form readout, matcher, soft borrowing "all") scored on its held-out questions in bins of their
nearest training question's similarity (all-MiniLM-L6-v2 vectors of the question and its options, the matcher's;
same option count). The bins' edges are fixed in advance (BINS), not chosen on the results.

    .venv/bin/python benchmarks/experiments/basis_bins.py [--seeds 0,1,2] [--json FILE] [--training-side]

--training-side scores, instead, the training side of the same splits (no held-out answer): each known training
question's prior estimate as a new question gets it (its out-of-fold text estimate; its nearest *other* training
questions' priors weighted by the fitted rule; the served mix of the two) against its own prior, squared error of the
mean column (the population's answer shape) and of the loadings (how groups differ), in the same bins, pooled over
the seeds; "zero" predicts uniform and no difference between groups.
"""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from neighbour_vectors import (  # the sibling script (run from the checkout's root, as documented)
    as_new_questions,
    fit_training_side,
)

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.embedder.sentence import SentenceEncoder
from service.gpo.features import FeatureSpec
from service.gpo.matching import blend_targets
from service.training.evaluate import EvalConfig, evaluate_split
from service.training.fit import TrainConfig, train_gpo
from service.training.held_out import new_question_split
from service.training.matching import with_question_vectors
from service.training.splits import Split, answered_sets, make_split, scorable_question_ids, validation_groups
from service.training.text_prior import prior_targets

BINS = (0.0, 0.6, 0.7, 0.8, 1.01)  # nearest known question's cosine similarity: [lo, hi)


def restricted(split: Split, qids: set[str]) -> Split:
    """`split` with each test group's targets restricted to `qids` (groups left with none dropped)."""
    targets = {g: tuple(q for q in split.targets_of(g) if q in qids) for g in split.test_groups}
    test = tuple(g for g in split.test_groups if targets[g])
    all_t = tuple(dict.fromkeys(q for g in test for q in targets[g]))
    contexts = {g: split.context_of(g) for g in test}
    targets = {g: targets[g] for g in test}
    return Split(split.train_groups, test, split.context_qids, all_t, split.split, split.seed, contexts, targets)


def training_cases(ds, table, seed: int) -> tuple[list[tuple[int, np.ndarray, np.ndarray, list, np.ndarray]], object]:
    """The training side of seed `seed`'s new-questions split (no held-out answer): for each known training question,
    (its bin, its own prior targets [n, 1 + k], its out-of-fold text estimate, its nearest other training questions'
    targets (nearest first, as many as the fitted rule's k), their similarities), and the rule fitted as served."""
    side = fit_training_side(table, ds, seed)
    priors, bank = side.priors, side.bank
    rule = bank.blend
    assert rule is not None, "soft borrowing chose no blending"
    cases = []
    for _, _, rows, text, others, sims in as_new_questions(table, side):
        order = np.argsort(-sims, kind="stable")[: rule.k]
        lent = [prior_targets(table, priors.full, bank.rows(int(others[o]), table.ovec[rows])) for o in order]
        top = sims[order].astype(np.float64)
        b = next(i for i in range(len(BINS) - 1) if BINS[i] <= top[0] < BINS[i + 1])
        cases.append((b, prior_targets(table, priors.full, rows), text, lent, top))
    return cases, rule


def training_side(ds, table, seeds: list[int]) -> None:
    """Print the training side's errors per bin (see the module's docstring)."""
    errors: dict[int, dict[str, float]] = {}
    for seed in seeds:
        cases, rule = training_cases(ds, table, seed)
        for b, own, text, lent, top in cases:
            estimates = {
                "zero": np.zeros_like(own),
                "text": text,
                "neighbours": np.tensordot(rule.weights(top), np.stack(lent), axes=1),
                "served": blend_targets(text, lent, top, rule),
            }
            acc = errors.setdefault(b, {"n": 0})
            acc["n"] += 1
            for name, est in estimates.items():
                acc[f"{name} mean"] = acc.get(f"{name} mean", 0.0) + float(((est[:, 0] - own[:, 0]) ** 2).sum())
                acc[f"{name} loadings"] = acc.get(f"{name} loadings", 0.0) + float(
                    ((est[:, 1:] - own[:, 1:]) ** 2).sum()
                )
    for b in sorted(errors):
        acc = errors[b]
        cols = "  ".join(f"{k} {v:.3f}" for k, v in acc.items() if k != "n")
        print(f"training side, similarity [{BINS[b]:.1f}, {min(BINS[b + 1], 1.0):.1f}): {acc['n']} questions; {cols}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--training-side", action="store_true", help="the training side's errors per bin instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ds, _, _ = load_group_dataset(None)
    table, _ = embed_group_dataset(ds)
    table = with_question_vectors(table, SentenceEncoder())
    if args.training_side:
        training_side(ds, table, [int(s) for s in args.seeds.split(",")])
        return
    spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
    share = EvalConfig().new_question_share
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        base = make_split(ds.groups, scorable_question_ids(ds), 0.6, seed, 20, answered_sets(ds))
        known, split = new_question_split(ds, base, share, seed, 20)
        fit, val = validation_groups(split.train_groups, seed)
        cfg = TrainConfig(max_steps=0, progress=False, seed=seed, neighbour_blend="all")
        result = train_gpo(table, ds, fit, val, table.qindex(known), spec, cfg)
        assert result.matcher is not None
        held = list(split.target_qids)
        q = table.qindex(held)
        _, sims = result.matcher.nearest_many(table.qvec[q], table.q_len[q])
        rule = result.matcher.blend
        for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
            in_bin = {qid for qid, s in zip(held, sims, strict=True) if lo <= s < hi}
            if not in_bin:
                continue
            shares = [rule.share(float(s), loadings=True) if rule else 0.0 for s in sims if lo <= s < hi]
            for r in evaluate_split(ds, table, restricted(split, in_bin), result, ["uniform"], subsets=("all",)):
                rec = {
                    "seed": seed,
                    "bin": f"[{lo:.1f}, {min(hi, 1.0):.1f})",
                    "n_questions": len(in_bin),
                    "mean_share": float(np.mean(shares)),
                    "method": r["method"],
                    "alignment": r["alignment"],
                    "contrast_r": r.get("contrast_r", 0.0),
                }
                rows.append(rec)
                print(json.dumps(rec), flush=True)
    print()
    for b in dict.fromkeys(r["bin"] for r in rows):
        for m in ("gpo", "uniform"):
            sel = [r for r in rows if r["bin"] == b and r["method"] == m]
            mean = {k: np.mean([r[k] for r in sel]) for k in ("alignment", "contrast_r", "n_questions", "mean_share")}
            print(
                f"similarity {b:>11} {m:>8}: alignment {mean['alignment']:.4f}  contrast r {mean['contrast_r']:+.3f}"
                f"  questions/seed {mean['n_questions']:.0f}  share {mean['mean_share']:.2f}  ({len(sel)} seeds)"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": vars(args), "records": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
