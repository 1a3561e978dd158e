"""Grouping episodes of similar length (plan_buckets, collate_buckets): every episode exactly once, at the lowest
estimated cost, and the same tokens as the padded batch."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.gpo.batch import (
    KEYS_PER_TOKEN,
    OVERHEAD_TOKENS,
    Episode,
    collate,
    collate_buckets,
    context_span,
    plan_buckets,
)

from .conftest import build_episode, make_questions


def _cost(groups, lengths, spans) -> float:
    return sum(
        len(g) * max(lengths[i] for i in g) * (1 + max(spans[i] for i in g) / KEYS_PER_TOKEN) + OVERHEAD_TOKENS
        for g in groups
    )


def _set_partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first, *part[i]]] + part[i + 1 :]
        yield [[first], *part]


@settings(max_examples=60, deadline=None)
@given(
    targets=st.integers(1, 200),
    contexts=st.lists(st.integers(0, 2000), min_size=1, max_size=6),
)
def test_the_plan_is_the_cheapest_of_all_groupings(targets, contexts):
    """Spans grow with lengths (every episode has the same targets after its context, as training draws them):
    cutting the sorted order into runs then loses nothing against every set partition (Bell(6) = 203)."""
    spans = contexts
    lengths = [c + targets for c in contexts]
    plan = plan_buckets(lengths, spans)
    assert sorted(i for g in plan for i in g) == list(range(len(lengths)))
    best = min(_cost(p, lengths, spans) for p in _set_partitions(list(range(len(lengths)))))
    assert _cost(plan, lengths, spans) == pytest.approx(best, rel=1e-12)


def test_similar_episodes_share_one_forward_and_far_apart_ones_do_not():
    assert len(plan_buckets([40] * 8, [30] * 8)) == 1
    assert len(plan_buckets([12, 14, 16, 18], [2, 4, 6, 8])) == 1  # padding is cheaper than another forward
    plan = plan_buckets([20, 2000, 24, 1990], [10, 1900, 14, 1880])
    assert sorted(sorted(g) for g in plan) == [[0, 2], [1, 3]]


def test_max_rows_caps_every_group():
    plan = plan_buckets([50] * 20, [40] * 20, max_rows=8)
    assert sorted(len(g) for g in plan) == [4, 8, 8]
    assert sorted(i for g in plan for i in g) == list(range(20))
    assert plan_buckets([], []) == []


def test_collate_buckets_holds_each_episode_unchanged():
    gen = torch.Generator().manual_seed(3)
    episodes = [
        build_episode(make_questions(gen, n_ctx), make_questions(gen, 3)) for n_ctx in (1, 40, 2, 38, 20, 1, 39)
    ]
    seen = []
    for idx, batch in collate_buckets(episodes, max_rows=3):
        assert len(idx) <= 3
        assert batch.x.shape[1] == max(episodes[i].y.shape[0] for i in idx)
        for b, i in enumerate(idx):
            e, n = episodes[i], episodes[i].y.shape[0]
            assert torch.equal(batch.x[b, :n], e.x) and torch.equal(batch.y[b, :n], e.y)
            assert torch.equal(batch.is_context[b, :n], e.is_context)
            assert torch.equal(batch.is_target[b, :n], ~e.is_context)
            assert not bool(batch.valid[b, n:].any())
        seen += idx
    assert sorted(seen) == list(range(len(episodes)))
    # the whole list padded together holds the same rows
    full = collate(episodes)
    assert int(full.valid.sum()) == sum(int(b.valid.sum()) for _, b in collate_buckets(episodes))


def test_context_span_is_the_last_context_position_plus_one():
    e = Episode(
        x=torch.zeros(5, 2),
        y=torch.zeros(5),
        is_context=torch.tensor([True, False, True, False, False]),
        question=torch.zeros(5, dtype=torch.long),
    )
    assert context_span(e) == 3
    assert context_span(Episode(x=e.x, y=e.y, is_context=torch.zeros(5, dtype=torch.bool), question=e.question)) == 0


def test_set_partitions_helper_counts_bell_numbers():
    assert [sum(1 for _ in _set_partitions(list(range(n)))) for n in range(1, 6)] == [1, 2, 5, 15, 52]
    assert all(
        sorted(i for g in p for i in g) == [0, 1, 2, 3] for p in itertools.islice(_set_partitions([0, 1, 2, 3]), 20)
    )
