"""GlobalOpinionQA's new-questions protocol alone (seed 0, the settings of results/globalopinionqa.json, no LLM
baselines): `gpo eval` runs it after the groups protocol, which takes ~45 min here.

    .venv/bin/python benchmarks/experiments/goqa_new_questions.py   # prints; writes runs/goqa_newq_seed0.json
"""

import logging
from pathlib import Path

import torch

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.gpo.features import FeatureSpec
from service.training.evaluate import EvalConfig
from service.training.fit import TrainConfig
from service.training.held_out import run_new_question_protocol
from service.training.records import write_json

logging.basicConfig(level=logging.INFO)
torch.set_num_threads(1)
ds, path, _ = load_group_dataset(Path("service/data/globalopinionqa/globalopinionqa.jsonl.gz"))
table, _ = embed_group_dataset(ds)
spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
tcfg = TrainConfig(max_steps=300, time_budget_s=300.0, progress=False)
records = run_new_question_protocol(ds, table, spec, tcfg, EvalConfig(seeds=[0], progress=False))
write_json(Path("runs/goqa_newq_seed0.json"), records)
for r in records:
    print(r["method"], r["subset"], round(r["alignment"], 4), r["n_scored"], r.get("best_step", ""))
