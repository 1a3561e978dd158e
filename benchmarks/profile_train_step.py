"""Where a meta-training step's time goes: torch profiler tables for our step and the naive reference's.

    .venv/bin/python -m benchmarks.profile_train_step [--threads 2]

Same batch shapes as benchmarks.run (8 groups, context 10-100 four-option questions, 30 targets), the shipped
architecture, one warm-up step then one profiled step each: ours as the trainer runs it,
ours on the batch padded as a whole, and the naive reference.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.naive_gpo import naive_loss
from benchmarks.run import _synthetic_episodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=12, help="operators listed per table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from service.config import Settings
    from service.gpo.model import GPO, GPOConfig
    from service.serving.predictor import Predictor

    settings = Settings()
    cfg = Predictor.from_store(settings.model_store, settings.checkpoint).model.cfg
    model = GPO(GPOConfig(**cfg.to_dict())).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    from service.gpo.batch import collate
    from service.training.fit import episodes_loss

    episodes = _synthetic_episodes(cfg.dim_x)
    batch = collate(episodes)
    n_keys = int(batch.is_context.any(dim=0).nonzero().max()) + 1
    print(
        f"batch: {tuple(batch.x.shape)} (rows, padded tokens, features); {int(batch.valid.sum())} real tokens, "
        f"{int(batch.is_context.sum())} context; keys per row {n_keys} (ours) vs {batch.x.shape[1]} (naive)"
    )

    def step(loss_fn) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(batch).backward()
        opt.step()

    variants = (
        ("ours (episodes of similar length padded together)", lambda b: episodes_loss(model, episodes)),
        ("ours, one padded batch", model.loss),
        ("naive", lambda b: naive_loss(model, b)),
    )
    for name, loss_fn in variants:
        step(loss_fn)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(loss_fn)
        print(f"\n== {name}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
