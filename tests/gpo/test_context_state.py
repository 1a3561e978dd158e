"""Cached context: encode_context + predict_targets equals the full forward on the joined episode."""

from __future__ import annotations

import pytest
import torch

from service.gpo.batch import collate
from service.gpo.model import GPO, ContextState

from .conftest import DIM_X, build_episode, make_questions, predict, tiny_model

ATOL = 1e-5


def _pad(rows: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)


def _split(model: GPO, groups):
    """Encoded contexts (one state per group, stacked) and padded targets of `groups` [(ctx, tgt)]."""
    states = []
    for ctx, _ in groups:
        x = torch.cat([q[0] for q in ctx])[None]
        y = torch.cat([q[1] for q in ctx])[None]
        with torch.no_grad():
            states.append(model.encode_context(x, y, torch.ones(y.shape, dtype=torch.bool)))
    tx = _pad([torch.cat([q[0] for q in tgt]) for _, tgt in groups])
    tq = _pad([torch.cat([torch.full((len(q[1]),), j) for j, q in enumerate(tgt)]) for _, tgt in groups]).long()
    tm = _pad([torch.ones(sum(len(q[1]) for q in tgt), dtype=torch.bool) for _, tgt in groups], False)
    return ContextState.stack(states), tx, tq, tm


def _random_groups(seed: int, n_groups: int, max_ctx: int = 12, max_tgt: int = 6):
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for _ in range(n_groups):
        n_ctx = int(torch.randint(1, max_ctx + 1, (1,), generator=gen))
        n_tgt = int(torch.randint(1, max_tgt + 1, (1,), generator=gen))
        groups.append((make_questions(gen, n_ctx), make_questions(gen, n_tgt)))
    return groups


@pytest.fixture(scope="module", params=["plain", "ridge", "mean"])
def model(request) -> GPO:
    if request.param == "plain":
        return tiny_model(seed=1)
    return tiny_model(seed=1, prior_feature=0, prior_rank=3, prior_readout=request.param)


def _full_targets(model: GPO, groups) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per group, (mean, std, logits) of its target tokens from the full forward of its own episode."""
    out = []
    for ctx, tgt in groups:
        ep = build_episode(ctx, tgt)
        pred = predict(model, [ep])
        t = ~ep.is_context
        out.append((pred.mean[0][t], pred.std[0][t], pred.logits[0][t]))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cached_context_equals_full_forward(model, seed):
    groups = _random_groups(seed, n_groups=5)
    state, tx, tq, tm = _split(model, groups)
    with torch.no_grad():
        pred = model.predict_targets(state, tx, tq, tm)
    for b, (mean, std, logits) in enumerate(_full_targets(model, groups)):
        n = len(mean)
        assert torch.allclose(pred.mean[b, :n], mean, atol=ATOL, rtol=0)
        assert torch.allclose(pred.std[b, :n], std, atol=ATOL, rtol=0)
        assert torch.allclose(pred.logits[b, :n], logits, atol=ATOL, rtol=0)
        assert not bool(pred.mean[b, n:].any()), "padding targets get no probability"


def test_cached_context_equals_full_forward_at_serving_size():
    """The serving shape: the default architecture, 100 five-option context questions, 8 target questions."""
    torch.manual_seed(0)
    from service.gpo.model import GPOConfig

    cfg = GPOConfig(dim_x=DIM_X, prior_feature=0, prior_rank=3, prior_readout="ridge")
    model = GPO(cfg).eval()
    with torch.no_grad():  # a trained head: the mean channel is no longer zero
        model.head[-1].weight.normal_(0, 0.1)
    gen = torch.Generator().manual_seed(5)

    def five(n):
        return [
            (torch.randn(5, DIM_X, generator=gen), torch.softmax(torch.randn(5, generator=gen), 0)) for _ in range(n)
        ]

    groups = [(five(100), five(8)), (five(37), five(3))]
    state, tx, tq, tm = _split(model, groups)
    with torch.no_grad():
        pred = model.predict_targets(state, tx, tq, tm)
    worst = 0.0
    for b, (mean, std, _) in enumerate(_full_targets(model, groups)):
        n = len(mean)
        worst = max(worst, float((pred.mean[b, :n] - mean).abs().max()), float((pred.std[b, :n] - std).abs().max()))
    assert worst <= ATOL, worst


def test_state_rows_round_trip_through_stack(model):
    groups = _random_groups(7, n_groups=3)
    state, tx, tq, tm = _split(model, groups)
    rows = [state.row(b) for b in range(state.batch_size)]
    assert [int(r.mask.shape[1]) for r in rows] == [sum(len(q[1]) for q in ctx) for ctx, _ in groups]
    again = ContextState.stack(rows)
    with torch.no_grad():
        a = model.predict_targets(state, tx, tq, tm).mean
        b = model.predict_targets(again, tx, tq, tm).mean
    assert torch.equal(a, b)


def test_context_change_changes_the_state(model):
    """A state belongs to one context: another preference on one item gives other keys and predictions."""
    gen = torch.Generator().manual_seed(11)
    ctx, tgt = make_questions(gen, 6), make_questions(gen, 2)
    changed = list(ctx)
    x0, y0 = changed[0]
    changed[0] = (x0, y0.flip(0) if len(y0) > 1 else y0)
    if torch.equal(changed[0][1], y0):
        pytest.skip("the flipped distribution equals the original")
    s1, tx, tq, tm = _split(model, [(ctx, tgt)])
    s2, *_ = _split(model, [(changed, tgt)])
    assert not torch.equal(s1.keys, s2.keys)
    with torch.no_grad():
        p1, p2 = model.predict_targets(s1, tx, tq, tm), model.predict_targets(s2, tx, tq, tm)
    # (the ridge readout starts with a zero mean channel: there the context moves the std and z)
    assert not (torch.allclose(p1.mean, p2.mean) and torch.allclose(p1.std, p2.std))


def test_training_batch_and_serving_path_agree_on_collated_episodes(model):
    """The same groups through collate (training layout, targets after context) and through the cache."""
    groups = _random_groups(13, n_groups=4)
    full = predict(model, collate([build_episode(c, t) for c, t in groups]))
    state, tx, tq, tm = _split(model, groups)
    with torch.no_grad():
        cached = model.predict_targets(state, tx, tq, tm)
    for b, (ctx, tgt) in enumerate(groups):
        n_ctx, n_tgt = sum(len(q[1]) for q in ctx), sum(len(q[1]) for q in tgt)
        assert torch.allclose(full.mean[b, n_ctx : n_ctx + n_tgt], cached.mean[b, :n_tgt], atol=ATOL, rtol=0)
