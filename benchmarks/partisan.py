"""Do registered Democrat and Republican groups get different answers on new partisan questions, in the
direction public polls document? (service/data/partisan: 26 questions in our own words, none in OpinionQA.)

Each party is registered with its OpinionQA answers to the same 20 contentious questions (a fixed draw, seed 0).
For each partisan question we compare the two groups' predicted share of the option that Democrats choose more
often (`democrat_option`): the direction is right when Democrats get the higher share. Scored for the shipped
checkpoint (GPO as served) and for `linear_probe` (service.training.probe: fitted on the other 15 OpinionQA
groups' answers to every OpinionQA question). Prints one line per question and the counts; --json writes them.

    .venv/bin/python benchmarks/partisan.py [--json results/partisan.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from service.config import get_settings
from service.embedder.embed import build_embedder
from service.embedder.sentence import attach_question_encoder
from service.serving.predictor import AnsweredItem, Item, Predictor
from service.training.baselines import group_context
from service.training.datasets import PreferenceDataset, Question
from service.training.items import build_item_table, item_texts
from service.training.opinionqa import load_opinionqa
from service.training.probe import linear_probe_many
from service.training.splits import scorable_question_ids

PARTISAN = Path(__file__).resolve().parent.parent / "service" / "data" / "partisan" / "partisan_questions.jsonl"
PARTIES = ("Democrat", "Republican")


def load_partisan(path: Path = PARTISAN) -> tuple[list[Question], list[str]]:
    """(questions, each one's democrat_option)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    questions = [Question(r["qid"], r["text"], tuple(r["options"]), tuple(map(float, r["ordinals"]))) for r in rows]
    return questions, [r["democrat_option"] for r in rows]


def context_ids(oqa: PreferenceDataset, n_context: int = 20) -> list[str]:
    """The 20 contentious OpinionQA questions both parties are registered with (a fixed draw, seed 0)."""
    contentious = [q.qid for q in oqa.questions if "contentious" in q.tags]
    return sorted(np.random.default_rng(0).choice(contentious, size=n_context, replace=False).tolist())


def served_predictions(
    predictor: Predictor, embed, oqa: PreferenceDataset, questions: list[Question], ctx_ids: list[str]
) -> dict[str, dict[str, np.ndarray]]:
    """party -> qid -> the served distribution, each party registered with its answers to `ctx_ids`; `embed(texts)`
    gives the embeddings (the checkpoint's embedder)."""

    def item_emb(q: Question) -> np.ndarray:
        return embed(predictor.choice_texts(q.text, q.options))

    targets = [Item(q.text, q.options, item_emb(q)) for q in questions]
    ctx_q = [oqa.question(q) for q in ctx_ids]
    ctx_emb = [item_emb(q) for q in ctx_q]
    out = {}
    for party in PARTIES:
        context = [
            AnsweredItem(q.text, q.options, e, oqa.dist(party, q.qid)) for q, e in zip(ctx_q, ctx_emb, strict=True)
        ]
        preds = predictor.predict(context, targets)
        out[party] = {q.qid: p.distribution for q, p in zip(questions, preds, strict=True)}
    return out


def right_direction(preds: dict[str, dict[str, np.ndarray]], questions: list[Question], dem_options: list[str]):
    """Per question, Democrats' minus Republicans' predicted share of `democrat_option`."""
    return [
        float(preds["Democrat"][q.qid][q.options.index(o)] - preds["Republican"][q.qid][q.options.index(o)])
        for q, o in zip(questions, dem_options, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--n-context", type=int, default=20)
    args = parser.parse_args()
    settings = get_settings()
    oqa = load_opinionqa()
    questions, dem_options = load_partisan()
    ctx_ids = context_ids(oqa, args.n_context)

    # one table for OpinionQA and the partisan questions (embeddings from the cache or the bundled LLM)
    combined = PreferenceDataset(questions=[*oqa.questions, *questions], groups=oqa.groups, dists=oqa.dists)
    embedder = build_embedder(settings)
    table = build_item_table(combined.questions, embedder.embed(item_texts(combined.questions), progress=True))

    predictor = Predictor.from_store(settings.model_store, settings.checkpoint)
    attach_question_encoder(predictor)  # as served: reworded known questions borrow their prior
    predictor.check_embedder(embedder.key_prefix, table.emb.shape[1])
    served = served_predictions(predictor, embedder.embed, oqa, questions, ctx_ids)
    train = [g for g in oqa.groups if g not in PARTIES]
    contexts = [group_context(oqa, party, ctx_ids) for party in PARTIES]
    probe = linear_probe_many(combined, table, train, scorable_question_ids(oqa), contexts, [q.qid for q in questions])
    probed = dict(zip(PARTIES, probe, strict=True))

    diffs = {
        "gpo": right_direction(served, questions, dem_options),
        "linear_probe": right_direction(probed, questions, dem_options),
    }
    rows, right = [], {name: sum(d > 0 for d in v) for name, v in diffs.items()}
    for i, (q, opt) in enumerate(zip(questions, dem_options, strict=True)):
        row = {"qid": q.qid, "democrat_option": opt, **{name: v[i] for name, v in diffs.items()}}
        rows.append(row)
        print(f"{q.qid}  D-R share of {opt[:40]!r:44}  gpo {row['gpo']:+.4f}  probe {row['linear_probe']:+.4f}")
    n = len(questions)
    summary = {
        name: {
            "right_direction": int(right[name]),
            "questions": n,
            "mean_abs_difference": float(np.mean([abs(r[name]) for r in rows])),
        }
        for name in right
    }
    for name, s in summary.items():
        print(f"{name}: right direction on {s['right_direction']} of {n} (mean |D-R| {s['mean_abs_difference']:.4f})")
    if args.json:
        meta = {"checkpoint": predictor.model_version, "context": ctx_ids, "embedder": embedder.key_prefix}
        args.json.write_text(json.dumps({"meta": meta, "summary": summary, "questions": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
