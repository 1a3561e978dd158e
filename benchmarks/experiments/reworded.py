"""The reworded-questions protocol alone (60% split, 20 context questions, the splits of `gpo eval`): GPO trained on
the split, scored on the test groups' targets that have a rewording, as worded and as reworded.

    .venv/bin/python benchmarks/experiments/reworded.py [--seeds 0,1,2] [--max-steps 0] [--time-budget-s 600]
        [--matcher]

--max-steps 0 scores the untrained model (the closed-form readout). Prints per seed and the means.
"""

import argparse
import logging

import numpy as np
import torch

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.embedder.sentence import SentenceEncoder
from service.gpo.features import FeatureSpec
from service.gpo.matching import BLEND_MODES
from service.training.evaluate import score_reworded
from service.training.fit import TrainConfig, train_gpo
from service.training.matching import with_question_vectors
from service.training.report import reworded_table
from service.training.reworded import SHIPPED_REWORDINGS, Rewordings, load_rewordings
from service.training.splits import answered_sets, make_split, scorable_question_ids, validation_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--blend",
        default="off",
        choices=list(BLEND_MODES),
        help="soft borrowing (TrainConfig.neighbour_blend)",
    )
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=600.0)
    parser.add_argument(
        "--matcher", action="store_true", help="match new questions to known ones (all-MiniLM-L6-v2 question vectors)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ds, _, _ = load_group_dataset(None)
    table, embedder = embed_group_dataset(ds)
    rewordings = Rewordings.embed(load_rewordings(SHIPPED_REWORDINGS, ds), table, embedder)
    if args.matcher:  # the tables carry question vectors: training fits a matcher, scoring uses it
        encoder = SentenceEncoder()
        table = with_question_vectors(table, encoder)
        rewordings = Rewordings(rewordings.pairs, with_question_vectors(rewordings.table, encoder))
    spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
    qids = scorable_question_ids(ds)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        split = make_split(ds.groups, qids, 0.6, seed, 20, answered_sets(ds))
        fit, val = validation_groups(split.train_groups, seed)
        cfg = TrainConfig(
            max_steps=args.max_steps,
            time_budget_s=args.time_budget_s,
            progress=False,
            seed=seed,
            neighbour_blend=args.blend,
        )
        result = train_gpo(table, ds, fit, val, table.qindex(qids), spec, cfg)
        for r in score_reworded(ds, rewordings, split, result, qids):
            r.update(protocol="reworded", seed=seed)
            rows.append(r)
            print(
                f"seed {seed} {r['method']:>13} {r['subset']:>9}: {r['alignment']:.4f}  r {r.get('contrast_r', 0):+.3f}"
            )
    print(reworded_table(rows))
    print(f"({len(rows)} records; {np.unique([r['seed'] for r in rows]).size} seeds)")


if __name__ == "__main__":
    main()
