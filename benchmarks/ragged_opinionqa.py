"""Write a ragged OpinionQA: every group loses a random share of its answers (`service.training.ragged`).

    .venv/bin/python -m benchmarks.ragged_opinionqa --drop 0.4 --seed 0 runs/ragged-opinionqa.jsonl.gz
    .venv/bin/gpo eval --data runs/ragged-opinionqa.jsonl.gz --splits 0.6 --seeds 0 --no-lm --max-steps 200

Prints how many answers are left and how many questions every group / no group still answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.training.jsonl import write_jsonl
from service.training.opinionqa import load_opinionqa
from service.training.ragged import drop_answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="JSONL file to write (.jsonl.gz: gzipped)")
    ap.add_argument("--drop", type=float, default=0.4, help="share of each group's answers to drop")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ragged = drop_answers(load_opinionqa(), args.drop, args.seed)
    none = sum(1 for q in ragged.questions if not any(ragged.has(g, q.qid) for g in ragged.groups))
    # a question no group answers any more cannot be written (JSONL holds answers): leave it out
    ragged = ragged.subset([q.qid for q in ragged.questions if any(ragged.has(g, q.qid) for g in ragged.groups)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(ragged, args.out)
    n = sum(len(d) for d in ragged.dists.values())
    every = len(ragged.complete_questions())
    print(
        f"wrote {args.out}: {len(ragged.groups)} groups, {len(ragged.questions)} questions, {n} answers; "
        f"{every} questions answered by every group, {none} left out (answered by none)"
    )


if __name__ == "__main__":
    main()
