"""Meta-training that rewards group contrast (issue 16): does it lift new questions' group contrast r?

    .venv/bin/python benchmarks/experiments/contrast_loss.py [--weights 0,1] [--seeds 0,1,2] [--max-steps 600]

The last untried lever on the transformer. Training episodes come in pairs: two fit groups with the same context and
target questions and the same prior dropout (so the same questions are shown as new). Beside each episode's Gaussian
NLL, the pair adds `weight` * 1/2 * sum over target items of ((m_a - m_b) - (y_a - y_b)) / 0.05)^2: the error of the
predicted difference between the two groups on each option. Weight 0 is the same paired sampling with the plain loss
(the control). Everything else as served (soft borrowing "all", MiniLM matcher, text prior); checkpoint choice as in
`gpo train` (validation groups and validation questions of the training side; it may keep the untrained readout,
reported as best step 0). Scored on the new-questions protocol (60% split, 20 context questions).
--keep last (a diagnostic, never a way to choose): the state after the last step instead of validation's choice, to
see what the training itself does to contrast when validation keeps (nearly) the untrained readout.
"""

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import service.training.fit as fit
from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.embedder.sentence import SentenceEncoder
from service.gpo.batch import collate
from service.gpo.features import FeatureSpec
from service.training.episodes import sample_episode
from service.training.evaluate import EvalConfig
from service.training.fit import LoopResult, TrainConfig
from service.training.held_out import run_new_question_protocol
from service.training.matching import with_question_vectors

SCALE = 0.05  # the typical size of two groups' difference on one option's share


class Paired:
    """`sample_episode` whose every second call replays the first one's draws for another group (same context and
    target questions, same prior dropout), and the loss that adds the pairs' contrast term."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.saved = None

    def sample(self, rng, table, x, y, qpool, n_ctx, *rest):
        if self.saved is None:
            self.saved = (rng.bit_generator.state, n_ctx, qpool)
            return sample_episode(rng, table, x, y, qpool, n_ctx, *rest)
        state, first_ctx, first_pool = self.saved
        self.saved = None
        assert np.array_equal(first_pool, qpool), "paired sampling needs the groups' pools alike (complete data)"
        rng.bit_generator.state = state
        return sample_episode(rng, table, x, y, qpool, first_ctx, *rest)

    def loss(self, model, episodes) -> torch.Tensor:
        assert len(episodes) % 2 == 0, "pairs need an even batch size"
        total = None
        for a in range(0, len(episodes), 2):
            batch = collate(episodes[a : a + 2])
            pred = model(batch)
            part = model.loss(batch, pred) * 2
            if self.weight > 0:
                t = batch.is_target[0]
                err = (pred.mean[0] - pred.mean[1]) - (batch.y[0] - batch.y[1])
                part = part + self.weight * 0.5 * ((err[t] / SCALE) ** 2).sum()
            total = part if total is None else total + part
        return total / len(episodes)


def keep_last(loop):
    """`meta_train_loop` that returns the last state as the kept one (its validation history unchanged)."""

    def run(model, *args, **kwargs) -> LoopResult:
        out = loop(model, *args, **kwargs)
        last = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return replace(out, best_state=last, best_step=out.steps_run)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="0,1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--time-budget-s", type=float, default=400.0)
    parser.add_argument("--keep", default="best", choices=["best", "last"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ds, _, _ = load_group_dataset(None)
    base, _ = embed_group_dataset(ds)
    q = with_question_vectors(base, SentenceEncoder())
    table = replace(base, qvec=q.qvec, qval=q.qval, ovec=q.ovec)
    spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
    if args.keep == "last":
        fit.meta_train_loop = keep_last(fit.meta_train_loop)
    rows = []
    for weight in (float(w) for w in args.weights.split(",")):
        paired = Paired(weight)
        fit.sample_episode, fit.episodes_loss = paired.sample, paired.loss
        for seed in (int(s) for s in args.seeds.split(",")):
            tcfg = TrainConfig(
                max_steps=args.max_steps, time_budget_s=args.time_budget_s, progress=False, neighbour_blend="all"
            )
            for r in run_new_question_protocol(ds, table, spec, tcfg, EvalConfig(seeds=[seed], progress=False)):
                if r["method"] not in ("gpo", "uniform") or r["subset"] != "all":
                    continue
                r["weight"] = weight
                rows.append(r)
                print(
                    f"weight {weight:g} seed {seed} {r['method']:>8}: alignment {r['alignment']:.4f} "
                    f"contrast r {r.get('contrast_r', float('nan')):+.3f} best step {r.get('best_step')} "
                    f"train {r.get('train_wall_s', 0):.0f} s",
                    flush=True,
                )
    for weight in dict.fromkeys(r["weight"] for r in rows):
        sel = [r for r in rows if r["weight"] == weight and r["method"] == "gpo"]
        print(
            f"mean weight {weight:g}: alignment {np.mean([r['alignment'] for r in sel]):.4f} contrast r "
            f"{np.mean([r['contrast_r'] for r in sel]):+.3f} best steps {[r.get('best_step') for r in sel]}"
        )
    if args.json:
        args.json.write_text(json.dumps({"command": vars(args), "records": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
