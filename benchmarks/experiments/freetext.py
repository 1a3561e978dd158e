"""The free-text protocol of `/generate` (issue 16): on the new-questions protocol's held-out questions (60% split,
20 context questions, the splits of `gpo eval`), each test group's ranking of first-person responses, where the
group's most chosen answer differs from the population's: is the top pick the group's answer, the population's, or
another? (service.training.freetext)

    .venv/bin/python benchmarks/experiments/freetext.py [--seeds 0,1,2] [--max-steps 0] [--json FILE]
        [--matcher] [--blend off|below|all|split]

Three ways of showing a held-out question to the same model, with the same contexts:
  survey_options:   the survey's own options in the multiple-choice template (what /predict sees for a new question)
  first_person_mc:  the first-person sentences in the multiple-choice template
  first_person_gen: the first-person sentences as /generate scores samples (the vectors pooled over the
                    chat-templated prompt and the response, as the worker pools them while sampling)
--max-steps 0 scores the closed-form readout (what validation kept in 5 of 6 trained runs, results/text_prior.txt).
"""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.embedder.sentence import SentenceEncoder
from service.gpo.features import FeatureSpec
from service.gpo.matching import BLEND_MODES
from service.training.evaluate import gpo_predictions, padded_result
from service.training.fit import TrainConfig, train_gpo
from service.training.freetext import SHIPPED_FIRST_PERSON, generate_vectors, load_first_person, pick_summary, top_picks
from service.training.held_out import new_question_split
from service.training.items import build_item_table
from service.training.matching import with_question_vectors
from service.training.reworded import Rewordings
from service.training.splits import Split, answered_sets, make_split, scorable_question_ids, validation_groups


def sub_split(split: Split, test: list[str], held: dict[str, str], target_of: dict[str, str]) -> Split:
    """`split` with each test group's targets restricted to the held-out questions in `held`, shown as
    `target_of[q]` (the question itself, or its free-text version)."""
    targets = {g: tuple(target_of[q] for q in split.targets_of(g) if q in held) for g in test}
    all_t = tuple(dict.fromkeys(q for t in targets.values() for q in t))
    contexts = {g: split.context_of(g) for g in test}
    return Split(split.train_groups, tuple(test), split.context_qids, all_t, split.split, split.seed, contexts, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=600.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--matcher", action="store_true", help="match new questions to known ones, as served")
    parser.add_argument(
        "--blend",
        default="off",
        choices=list(BLEND_MODES),
        help="soft borrowing (TrainConfig.neighbour_blend)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ds, _, _ = load_group_dataset(None)
    table, embedder = embed_group_dataset(ds)
    pairs = load_first_person(SHIPPED_FIRST_PERSON, ds)
    questions = [q for _, q in pairs]
    gen = np.concatenate([generate_vectors(embedder.lm, q.text, q.options, embedder.pooling) for q in questions])
    versions = {
        "first_person_mc": Rewordings.embed(pairs, table, embedder),
        "first_person_gen": Rewordings(
            pairs, build_item_table([*table.questions, *questions], np.concatenate([table.emb, gen]))
        ),
    }
    if args.matcher:  # every table carries question vectors: training fits a matcher, scoring uses it
        encoder = SentenceEncoder()
        table = with_question_vectors(table, encoder)
        versions = {k: Rewordings(v.pairs, with_question_vectors(v.table, encoder)) for k, v in versions.items()}
    spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
    qids = scorable_question_ids(ds)
    rows, summaries = [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        base = make_split(ds.groups, qids, 0.6, seed, 20, answered_sets(ds))
        known, split = new_question_split(ds, base, 0.2, seed, 20)
        fit, val = validation_groups(split.train_groups, seed)
        cfg = TrainConfig(
            max_steps=args.max_steps,
            time_budget_s=args.time_budget_s,
            progress=False,
            seed=seed,
            neighbour_blend=args.blend,
        )
        result = train_gpo(table, ds, fit, val, table.qindex(known), spec, cfg)
        held = {orig: q.qid for orig, q in pairs if orig in set(split.target_qids)}
        test = [g for g in split.test_groups if any(q in held for q in split.targets_of(g))]

        for variant in ("survey_options", *versions):
            if variant == "survey_options":
                sub, data, tab, res = sub_split(split, test, held, {q: q for q in held}), ds, table, result
                qid_of = {q: q for q in held}
            else:
                v = versions[variant]
                sub, data, tab = sub_split(split, test, held, held), v.dataset(ds, test), v.table
                res = padded_result(result, len(ds.questions), tab)
                qid_of = {fq: q for q, fq in held.items()}
            preds = dict(zip(test, gpo_predictions(res, tab, data, sub), strict=True))
            picks = top_picks(ds, split.train_groups, preds, qid_of)
            for r in picks:
                r.update(seed=seed, variant=variant)
            rows += picks
            s = {"seed": seed, "variant": variant, **pick_summary(picks, seed=seed)}
            summaries.append(s)
            print(json.dumps(s), flush=True)
    print()
    for variant in ("survey_options", *versions):
        sel = [r for r in rows if r["variant"] == variant]
        s = pick_summary(sel)
        print(f"all seeds {variant:>17}: {json.dumps(s)}")
        summaries.append({"seed": "all", "variant": variant, **s})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"command": vars(args), "summaries": summaries, "picks": rows}, indent=1, default=str)
        )


if __name__ == "__main__":
    main()
