"""GPO with and without the text prior on the held-out protocols (new questions, new context): alignment and
group contrast per seed, 60% split, 20 context questions, the splits of `gpo eval`.

    .venv/bin/python benchmarks/experiments/text_prior.py [--data FILE] [--seeds 0,1,2] [--max-steps 1200]
        [--time-budget-s 600] [--variants text,none,blend,blend_all,blend_split,blend_contrast]
        [--protocols new_questions,new_context] [--matcher]

--max-steps 0 scores the untrained model (the closed-form readout alone). Prints one line per record and the means;
--json writes the records.
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
from service.training.evaluate import EvalConfig
from service.training.fit import TrainConfig
from service.training.held_out import run_new_context_protocol, run_new_question_protocol
from service.training.matching import with_question_vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, default=1200)
    parser.add_argument("--time-budget-s", type=float, default=600.0)
    parser.add_argument("--variants", default="text,none")
    parser.add_argument("--protocols", default="new_questions,new_context")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--matcher", action="store_true", help="match new questions to known ones (all-MiniLM-L6-v2 question vectors)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ds, _, _ = load_group_dataset(args.data)
    table, _ = embed_group_dataset(ds)
    if args.matcher:  # the table carries question vectors: training fits a matcher, scoring uses it
        table = with_question_vectors(table, SentenceEncoder())
    spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
    runners = {"new_questions": run_new_question_protocol, "new_context": run_new_context_protocol}
    rows = []
    for variant in args.variants.split(","):
        for protocol in args.protocols.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                tcfg = TrainConfig(
                    max_steps=args.max_steps,
                    time_budget_s=args.time_budget_s,
                    progress=False,
                    text_prior=variant in {"text", "blend", "blend_all", "blend_split", "blend_contrast"},
                    neighbour_blend={
                        "blend": "below",
                        "blend_all": "all",
                        "blend_split": "split",
                        "blend_contrast": "contrast",
                    }.get(variant, "off"),
                )
                for r in runners[protocol](ds, table, spec, tcfg, EvalConfig(seeds=[seed], progress=False)):
                    r["variant"] = variant
                    rows.append(r)
                    print(
                        f"{variant:>5} {protocol:>13} seed {seed} {r['method']:>13} {r['subset']:>16}: "
                        f"alignment {r['alignment']:.4f}  contrast r {r.get('contrast_r', float('nan')):+.3f}"
                        + (f"  (best step {r['best_step']})" if "best_step" in r else ""),
                        flush=True,
                    )
    print()
    for key in dict.fromkeys((r["variant"], r["protocol"], r["method"], r["subset"]) for r in rows):
        sel = [r for r in rows if (r["variant"], r["protocol"], r["method"], r["subset"]) == key]
        a = [r["alignment"] for r in sel]
        c = [r["contrast_r"] for r in sel if "contrast_r" in r]
        print(
            f"mean {key[0]:>5} {key[1]:>13} {key[2]:>13} {key[3]:>16}: alignment {np.mean(a):.4f} ± {np.std(a):.4f}"
            f"  contrast r {np.mean(c) if c else float('nan'):+.3f}  ({len(a)} seeds)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": vars(args), "records": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
