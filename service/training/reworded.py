"""Reworded questions: known survey questions in a user's own words (the reworded-questions protocol).

A user rarely types a survey question exactly as the training survey words it. A rewording file
(service/data/reworded/opinionqa_reworded.jsonl) gives, for known questions, new question text and options (the
same number, in the same order, with the same meaning). The protocol scores a trained model on the test groups'
targets twice: as worded in the survey (subset "original": known questions) and as reworded ("reworded"). A
reworded question is a new question to the model, to the prior bank (which matches text and options exactly) and to
every baseline: only its text links it to the known one. Its true answer is the original's. How much of the
known-question edge over uniform survives is the measure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from service.training.datasets import PreferenceDataset, Question
from service.training.items import ItemTable, build_item_table, item_texts

SHIPPED_REWORDINGS = Path(__file__).resolve().parent.parent / "data" / "reworded" / "opinionqa_reworded.jsonl"
SUFFIX = "~reworded"


def load_rewordings(path: Path, dataset: PreferenceDataset) -> list[tuple[str, Question]]:
    """(original qid, reworded question) for each line whose qid is in `dataset`; the reworded question's id is the
    original's plus SUFFIX and it keeps the original's ordinals and tags. Raises ValueError on a line whose option
    count differs from its original's."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        qid = row["qid"]
        try:
            original = dataset.question(qid)
        except KeyError:
            continue  # a rewording of a question this data set does not hold
        options = tuple(str(o) for o in row["options"])
        if len(options) != original.n_options:
            raise ValueError(f"{path}:{n}: {qid} has {original.n_options} options, its rewording {len(options)}")
        out.append((qid, replace(original, qid=qid + SUFFIX, text=str(row["text"]), options=options)))
    return out


@dataclass
class Rewordings:
    """The reworded questions with the table the protocol scores on: the data set's items, then theirs."""

    pairs: list[tuple[str, Question]]
    table: ItemTable  # the data set's table with the reworded questions' items appended

    @classmethod
    def embed(cls, pairs: list[tuple[str, Question]], table: ItemTable, embedder) -> Rewordings:
        """Embed the reworded questions' items with `embedder` (the one `table` was embedded with)."""
        questions = [q for _, q in pairs]
        emb = embedder.embed(item_texts(questions))
        return cls(pairs, build_item_table([*table.questions, *questions], np.concatenate([table.emb, emb])))

    def dataset(self, dataset: PreferenceDataset, groups: list[str]) -> PreferenceDataset:
        """`dataset` with the reworded questions added, answered (with the original's answers) by `groups` only:
        no other group, a training group least of all, answered them."""
        dists = {g: dict(d) for g, d in dataset.dists.items()}
        for qid, q in self.pairs:
            for g in groups:
                if dataset.has(g, qid):
                    dists[g][q.qid] = dataset.dist(g, qid)
        return PreferenceDataset(
            questions=[*dataset.questions, *(q for _, q in self.pairs)],
            groups=list(dataset.groups),
            dists=dists,
            group_attributes=dict(dataset.group_attributes),
        )
