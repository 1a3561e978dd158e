"""Diagnostic (issue 16; not a choice, nothing served changes with it): GPO and the linear probe averaged on the
held-out protocols, served setup (matcher, soft borrowing "all", closed-form readout), 60% split, seeds 0-2.

    .venv/bin/python benchmarks/experiments/ensemble_probe.py W nq,nc

Prints GPO, uniform and, in the rows named linear_probe, the ensemble W * gpo + (1 - W) * probe (renormalised), by
wrapping service.training.evaluate's two predictors. Do they carry different signal on new questions?
"""

import sys

import numpy as np
import torch

import service.training.evaluate as ev
from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.embedder.sentence import SentenceEncoder
from service.gpo.features import FeatureSpec
from service.training.evaluate import EvalConfig
from service.training.fit import TrainConfig
from service.training.held_out import run_new_context_protocol, run_new_question_protocol
from service.training.matching import with_question_vectors

W = float(sys.argv[1])
captured = {}
orig_gpo, orig_probe = ev.gpo_predictions, ev.linear_probe_many


def gpo(*a, **k):
    out = orig_gpo(*a, **k)
    captured["gpo"] = out
    return out


def probe(*a, **k):
    p = orig_probe(*a, **k)
    g = captured.pop("gpo")
    out = []
    for pg, gg in zip(p, g, strict=True):
        d = {}
        for q, v in pg.items():
            m = W * np.asarray(gg[q]) + (1 - W) * np.asarray(v)
            d[q] = m / m.sum()
        out.append(d)
    return out


ev.gpo_predictions, ev.linear_probe_many = gpo, probe
torch.set_num_threads(2)
ds, _, _ = load_group_dataset(None)
table, _ = embed_group_dataset(ds)
table = with_question_vectors(table, SentenceEncoder())
spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
rows = []
for proto in sys.argv[2].split(","):
    run = {"nq": run_new_question_protocol, "nc": run_new_context_protocol}[proto]
    for seed in [0, 1, 2]:
        tcfg = TrainConfig(max_steps=0, progress=False, neighbour_blend="all")
        for r in run(ds, table, spec, tcfg, EvalConfig(seeds=[seed], progress=False)):
            rows.append(r)
for key in dict.fromkeys((r["protocol"], r["method"], r["subset"]) for r in rows):
    sel = [r for r in rows if (r["protocol"], r["method"], r["subset"]) == key]
    a = np.mean([r["alignment"] for r in sel])
    c = np.mean([r.get("contrast_r", np.nan) for r in sel])
    print(f"w {W} {key}: alignment {a:.4f} r {c:+.3f}")
