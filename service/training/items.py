"""ItemTable: a dataset flattened to items (question, option) with their LLM embeddings and group preferences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.embedder.prompts import format_items
from service.training.datasets import PreferenceDataset, Question


@dataclass
class ItemTable:
    """Items in question order, then option order. Question i owns rows q_start[i] : q_start[i] + q_len[i]."""

    questions: list[Question]
    q_start: np.ndarray  # [Q] int
    q_len: np.ndarray  # [Q] int
    item_q: np.ndarray  # [I] int: question index of each item
    emb: np.ndarray  # [I, D] float32 LLM embeddings
    # [Q, d] unit sentence vectors of the questions (service.gpo.matching.match_text), for the rewording-tolerant
    # prior bank; None: questions are matched by exact text only
    qvec: np.ndarray | None = None
    # validation rewordings of the table's questions, for choosing the matcher's threshold
    # (service.training.matching): (question index [m] int, unit sentence vectors [m, d], the unit vectors of their
    # options [sum of the m questions' option counts, d], question by question); None: none
    qval: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    # [I, d] unit sentence vectors of each option's own text (service.gpo.matching.option_text): the matcher pairs a
    # borrowed question's options by them; None: in order
    ovec: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.index = {q.qid: i for i, q in enumerate(self.questions)}
        assert self.emb.shape[0] == self.item_q.shape[0], "one embedding per item"
        assert self.qvec is None or self.qvec.shape[0] == len(self.questions), "one question vector per question"
        assert self.ovec is None or self.ovec.shape[0] == self.n_items, "one option vector per item"

    @property
    def n_items(self) -> int:
        return int(self.item_q.shape[0])

    def rows(self, qidx: np.ndarray | Sequence[int]) -> np.ndarray:
        """Item rows of the given question indices, concatenated in that order."""
        qidx = np.asarray(qidx, dtype=np.int64)
        if qidx.size == 0:
            return np.zeros(0, dtype=np.int64)
        lens = self.q_len[qidx]
        starts = np.repeat(self.q_start[qidx] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        return starts + np.arange(int(lens.sum()))

    def qindex(self, qids: Sequence[str]) -> np.ndarray:
        return np.array([self.index[q] for q in qids], dtype=np.int64)

    def group_y(self, dataset: PreferenceDataset, group: str) -> np.ndarray:
        """[I] the group's preference for every item (NaN where the group did not answer the question)."""
        y = np.full(self.n_items, np.nan, dtype=np.float32)
        for i, q in enumerate(self.questions):
            if dataset.has(group, q.qid):
                y[self.q_start[i] : self.q_start[i] + self.q_len[i]] = dataset.dist(group, q.qid)
        return y


def item_texts(questions: Sequence[Question]) -> list[str]:
    """The text embedded for every item, in ItemTable order (the paper's prompt + one option)."""
    return [t for q in questions for t in format_items(q.text, list(q.options))]


def build_item_table(questions: Sequence[Question], emb: np.ndarray) -> ItemTable:
    """Lay out items for `questions` with their embeddings (rows in `item_texts` order)."""
    q_len = np.array([q.n_options for q in questions], dtype=np.int64)
    q_start = np.concatenate([[0], np.cumsum(q_len)[:-1]]).astype(np.int64)
    item_q = np.repeat(np.arange(len(questions)), q_len)
    assert emb.shape[0] == int(q_len.sum()), f"{emb.shape[0]} embeddings for {int(q_len.sum())} items"
    return ItemTable(list(questions), q_start, q_len, item_q, np.asarray(emb, dtype=np.float32))


def embed_dataset(dataset: PreferenceDataset, embedder, progress: bool = True) -> ItemTable:
    """Embed every item of the dataset with `embedder` (cached on disk by the embedder)."""
    texts = item_texts(dataset.questions)
    return build_item_table(dataset.questions, embedder.embed(texts, progress=progress))
