"""GPO model: symmetries of in-context prediction, padding, per-question softmax, loss, input checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.gpo.batch import Episode, GPOBatch, collate
from service.gpo.model import GPO, GPOConfig, segment_softmax

from .conftest import DIM_X, build_episode, make_questions, permute_episode, predict, tiny_model

ATOL = 1e-5
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["plain", "ridge"])
def model(request):
    """The plain GPO, and GPO with the ridge prior readout (x[..., 0] flag, 1 mean, 2:5 loadings)."""
    if request.param == "plain":
        return tiny_model(seed=0)
    return tiny_model(seed=0, prior_feature=0, prior_rank=3, prior_readout="ridge")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _target_outputs(model, ep: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the episode's target tokens, in token order."""
    pred = predict(model, [ep])
    n = ep.y.shape[0]
    tgt = ~ep.is_context
    return pred.mean[0, :n][tgt], pred.std[0, :n][tgt]


# ---------------------------------------------------------------- symmetries


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_context_question_permutation_invariance(model, seed):
    g = _gen(seed)
    ctx, tgt = make_questions(g, 4), make_questions(g, 3)
    m0, s0 = _target_outputs(model, build_episode(ctx, tgt))
    order = torch.randperm(len(ctx), generator=g).tolist()
    m1, s1 = _target_outputs(model, build_episode([ctx[i] for i in order], tgt))
    torch.testing.assert_close(m1, m0, atol=ATOL, rtol=0)
    torch.testing.assert_close(s1, s0, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_context_token_permutation_invariance(model, seed):
    """Shuffling the context tokens themselves (splitting questions apart) changes nothing either."""
    g = _gen(seed)
    ep = build_episode(make_questions(g, 4), make_questions(g, 3))
    n_ctx = int(ep.is_context.sum())
    perm = torch.cat([torch.randperm(n_ctx, generator=g), torch.arange(n_ctx, ep.y.shape[0])])
    m0, s0 = _target_outputs(model, ep)
    m1, s1 = _target_outputs(model, permute_episode(ep, perm))
    torch.testing.assert_close(m1, m0, atol=ATOL, rtol=0)
    torch.testing.assert_close(s1, s0, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_question_permutation_equivariance(model, seed):
    g = _gen(seed)
    ctx, tgt = make_questions(g, 3), make_questions(g, 4)
    pred0 = _target_outputs(model, build_episode(ctx, tgt))
    order = torch.randperm(len(tgt), generator=g).tolist()
    pred1 = _target_outputs(model, build_episode(ctx, [tgt[i] for i in order]))  # question ids renumbered
    sizes = [len(y) for _, y in tgt]
    for out0, out1 in zip(pred0, pred1, strict=True):
        per_q0 = list(out0.split(sizes))
        expected = torch.cat([per_q0[i] for i in order])
        torch.testing.assert_close(out1, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_full_token_permutation_equivariance(model, seed):
    """Interleaving context and target tokens in any order (ids kept) permutes the outputs alike."""
    g = _gen(seed)
    ep = build_episode(make_questions(g, 3), make_questions(g, 3))
    perm = torch.randperm(ep.y.shape[0], generator=g)
    p0, p1 = predict(model, [ep]), predict(model, [permute_episode(ep, perm)])
    torch.testing.assert_close(p1.mean[0], p0.mean[0, perm], atol=ATOL, rtol=0)
    torch.testing.assert_close(p1.std[0], p0.std[0, perm], atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_unaffected_by_other_targets(model, seed):
    g = _gen(seed)
    ctx, tgt = make_questions(g, 3), make_questions(g, 5)
    m_all, s_all = _target_outputs(model, build_episode(ctx, tgt))
    sizes = [len(y) for _, y in tgt]
    for i in range(len(tgt)):
        m_one, s_one = _target_outputs(model, build_episode(ctx, [tgt[i]]))
        torch.testing.assert_close(m_one, m_all.split(sizes)[i], atol=ATOL, rtol=0)
        torch.testing.assert_close(s_one, s_all.split(sizes)[i], atol=ATOL, rtol=0)
    # dropping a subset (here the odd questions) leaves the rest unchanged as well
    keep = list(range(0, len(tgt), 2))
    m_sub, s_sub = _target_outputs(model, build_episode(ctx, [tgt[i] for i in keep]))
    torch.testing.assert_close(m_sub, torch.cat([m_all.split(sizes)[i] for i in keep]), atol=ATOL, rtol=0)
    torch.testing.assert_close(s_sub, torch.cat([s_all.split(sizes)[i] for i in keep]), atol=ATOL, rtol=0)


def test_padding_changes_nothing(model):
    g = _gen(7)
    short = build_episode(make_questions(g, 2), make_questions(g, 2))
    long = build_episode(make_questions(g, 6), make_questions(g, 5))
    n = short.y.shape[0]
    assert long.y.shape[0] > n
    alone = predict(model, [short])
    for batch, row in (([short, long], 0), ([long, short], 1), ([long, short, long], 1)):
        pred = predict(model, batch)
        for name in ("mean", "std", "logits"):
            torch.testing.assert_close(
                getattr(pred, name)[row, :n], getattr(alone, name)[0], atol=ATOL, rtol=0, msg=name
            )
        assert (pred.mean[row, n:] == 0).all()


def test_padding_token_content_is_ignored(model):
    """Garbage in padded slots (x, y, question id) does not leak into real tokens."""
    g = _gen(8)
    ep = build_episode(make_questions(g, 3), make_questions(g, 2))
    b = collate([ep, build_episode(make_questions(g, 6), make_questions(g, 4))])
    n = ep.y.shape[0]
    x, y, q = b.x.clone(), b.y.clone(), b.question.clone()
    x[0, n:] = torch.randn_like(x[0, n:]) * 100
    y[0, n:] = 5.0
    q[0, n:] = 0
    noisy = GPOBatch(x=x, y=y, is_context=b.is_context, is_target=b.is_target, question=q)
    p0, p1 = predict(model, b), predict(model, noisy)
    torch.testing.assert_close(p1.mean[:, :n], p0.mean[:, :n], atol=ATOL, rtol=0)
    torch.testing.assert_close(p1.std[:, :n], p0.std[:, :n], atol=ATOL, rtol=0)


def test_target_y_is_not_an_input(model):
    """The truth of targets must not influence predictions (it is zeroed before the embedding)."""
    g = _gen(9)
    ep = build_episode(make_questions(g, 3), make_questions(g, 3))
    y = ep.y.clone()
    y[~ep.is_context] = torch.rand(int((~ep.is_context).sum()), generator=g)
    m0, s0 = _target_outputs(model, ep)
    m1, s1 = _target_outputs(model, Episode(ep.x, y, ep.is_context, ep.question))
    torch.testing.assert_close(m1, m0, atol=0, rtol=0)
    torch.testing.assert_close(s1, s0, atol=0, rtol=0)


# ---------------------------------------------------------------- per-question softmax


def test_per_question_distributions(model):
    g = _gen(11)
    eps = [build_episode(make_questions(g, c), make_questions(g, t)) for c, t in ((2, 3), (5, 1), (1, 6))]
    b = collate(eps)
    pred = predict(model, b)
    assert torch.isfinite(pred.mean).all() and torch.isfinite(pred.std).all()
    assert ((pred.mean >= 0) & (pred.mean <= 1)).all()
    for r in range(b.y.shape[0]):
        qs = b.question[r][b.is_target[r]].unique()
        assert len(qs) > 0
        for q in qs:
            sel = b.is_target[r] & (b.question[r] == q)
            assert abs(float(pred.mean[r][sel].sum()) - 1.0) < 1e-5
    assert (pred.mean[~b.is_target] == 0).all()  # context and padding
    assert (pred.std[~b.is_target] == 1).all()
    assert (pred.std[b.is_target] >= model.cfg.min_std).all()


def _naive_segment_softmax(logits, segment, valid):
    out = torch.zeros_like(logits)
    for b in range(logits.shape[0]):
        for s in segment[b][valid[b]].unique():
            sel = valid[b] & (segment[b] == s)
            out[b, sel] = torch.softmax(logits[b, sel], dim=0)
    return out


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3),
    N=st.integers(1, 9),
    n_seg=st.integers(1, 4),
    scale=st.sampled_from([1.0, 30.0, 1000.0]),
    seed=st.integers(0, 2**16),
)
def test_segment_softmax_matches_naive(B, N, n_seg, scale, seed):
    g = _gen(seed)
    logits = torch.randn(B, N, generator=g, dtype=torch.float64) * scale
    valid = torch.rand(B, N, generator=g) < 0.7
    segment = torch.randint(0, n_seg, (B, N), generator=g)
    if valid.any():  # invalid entries use ids within the valid range (see the xfail test below otherwise)
        segment = segment.clamp(max=int(segment[valid].max()))
    out = segment_softmax(logits, segment, valid)
    expected = _naive_segment_softmax(logits, segment, valid)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-9)


def test_segment_softmax_ignores_ids_of_invalid_tokens():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    valid = torch.tensor([[True, True, False, False]])
    segment = torch.tensor([[0, 0, 5, 7]])
    out = segment_softmax(logits, segment, valid)
    torch.testing.assert_close(out, _naive_segment_softmax(logits, segment, valid))


def test_context_question_ids_do_not_matter(model):
    g = _gen(12)
    ctx, tgt = make_questions(g, 3), make_questions(g, 2)
    m0, s0 = _target_outputs(model, build_episode(ctx, tgt, ctx_qid="zero"))
    m1, s1 = _target_outputs(model, build_episode(ctx, tgt, ctx_qid="after"))
    torch.testing.assert_close(m1, m0, atol=ATOL, rtol=0)
    torch.testing.assert_close(s1, s0, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- loss and training


def _train_batch(seed: int) -> GPOBatch:
    g = _gen(seed)
    return collate([build_episode(make_questions(g, c), make_questions(g, t)) for c, t in ((3, 2), (2, 4))])


def test_loss_finite_with_finite_gradients():
    model = tiny_model(seed=1).train()
    b = _train_batch(20)
    loss = model.loss(b)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_gradients_finite_when_a_segment_has_no_targets():
    """Context tokens alone in segment 0 (targets numbered from 1): -inf arithmetic must not leak NaNs."""
    model = tiny_model(seed=1).train()
    g = _gen(21)
    ep = build_episode(make_questions(g, 2), make_questions(g, 2))
    q = torch.where(ep.is_context, ep.question, ep.question + 1)
    b = collate([Episode(ep.x, ep.y, ep.is_context, q)])
    loss = model.loss(b)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_loss_matches_manual_gaussian_nll(model):
    b = _train_batch(22)
    pred = predict(model, b)
    per_token = torch.distributions.Normal(pred.mean, pred.std).log_prob(b.y).neg()
    expected = (per_token * b.is_target).sum(dim=1).mean()
    with torch.no_grad():
        torch.testing.assert_close(model.loss(b, pred), expected, atol=1e-5, rtol=1e-5)


def test_adam_steps_reduce_loss():
    model = tiny_model(seed=2).train()
    b = _train_batch(23)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(model.loss(b))
    for _ in range(25):
        opt.zero_grad()
        loss = model.loss(b)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(model.loss(b))
    assert after < before - 0.1, (before, after)


# ---------------------------------------------------------------- input checks


def test_row_without_context_raises(model):
    g = _gen(30)
    with_ctx = build_episode(make_questions(g, 2), make_questions(g, 2))
    no_ctx = build_episode([], make_questions(g, 2))
    with pytest.raises(AssertionError):
        model(collate([with_ctx, no_ctx]))


def test_batch_rejects_token_both_context_and_target():
    b = collate([build_episode(make_questions(_gen(31), 2), make_questions(_gen(32), 1))])
    both = b.is_target.clone()
    both[0, 0] = True  # token 0 is a context token
    with pytest.raises(AssertionError):
        GPOBatch(x=b.x, y=b.y, is_context=b.is_context, is_target=both, question=b.question)


def test_batch_rejects_mismatched_shapes():
    x = torch.zeros(1, 3, DIM_X)
    m = torch.zeros(1, 3, dtype=torch.bool)
    q = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(AssertionError):
        GPOBatch(x=x, y=torch.zeros(1, 4), is_context=m, is_target=m, question=q)
    with pytest.raises(AssertionError):
        GPOBatch(x=x, y=torch.zeros(1, 3), is_context=m, is_target=m, question=q[:, :2])


# ---------------------------------------------------------------- import hygiene


def test_gpo_imports_no_heavy_modules():
    code = (
        "import json, sys\n"
        "import service.gpo.model, service.gpo.batch, service.gpo.prior, service.gpo.checkpoint, service.gpo.losses\n"
        "print(json.dumps([m for m in ('fastapi', 'sqlalchemy', 'transformers') if m in sys.modules]))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_context_actually_matters(model):
    """Guard against vacuous symmetry tests: changing the context's answers changes the predictions."""
    g = _gen(40)
    ctx, tgt = make_questions(g, 3), make_questions(g, 2)
    m0, s0 = _target_outputs(model, build_episode(ctx, tgt))
    flipped = [(x, y.flip(0)) for x, y in ctx]
    m1, s1 = _target_outputs(model, build_episode(flipped, tgt))
    assert (m1 - m0).abs().max() > 1e-4 or (s1 - s0).abs().max() > 1e-4


def test_mean_readout_starts_softmax_at_the_prior():
    """With the head's last layer zeroed, option scores are log(prior): known questions get the prior
    (renormalised), a question whose prior column is 0 (unknown) gets the uniform distribution."""
    from service.gpo.batch import GPOBatch
    from service.gpo.model import GPO, GPOConfig

    torch.manual_seed(0)
    cfg = GPOConfig(dim_x=3, d_model=16, n_layers=1, n_heads=2, d_ff=16, prior_feature=0, prior_readout="mean")
    model = GPO(cfg).eval()
    torch.nn.init.zeros_(model.head[-1].weight)
    torch.nn.init.zeros_(model.head[-1].bias)
    prior = torch.tensor([0.5, 0.5, 0.2, 0.3, 0.5, 0.0, 0.0, 0.0])
    x = torch.randn(1, 8, 3)
    x[0, :, 0] = (prior > 0).float()  # known flag
    x[0, :, 1] = prior
    batch = GPOBatch(
        x=x,
        y=torch.rand(1, 8),
        is_context=torch.tensor([[True, True, False, False, False, False, False, False]]),
        is_target=torch.tensor([[False, False, True, True, True, True, True, True]]),
        question=torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]]),
    )
    with torch.no_grad():
        mean = model(batch).mean[0]
    assert torch.allclose(mean[2:5], torch.tensor([0.2, 0.3, 0.5]), atol=1e-6)
    assert torch.allclose(mean[5:], torch.full((3,), 1 / 3), atol=1e-6)


def test_ridge_readout_at_init_is_the_closed_form_latent_factor_estimate():
    """Before training, the ridge readout predicts softmax(log(clamp(mean + L z))) with z the ridge fit
    of the context residuals, computed here independently in float64; unknown items are uniform."""
    from service.gpo.batch import GPOBatch
    from service.gpo.model import GPO, GPOConfig

    torch.manual_seed(0)
    k, lam = 2, 0.05
    cfg = GPOConfig(
        dim_x=5,
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=16,
        prior_feature=1,
        prior_rank=k,
        prior_readout="ridge",
        ridge_init=lam,
    )
    model = GPO(cfg).eval()
    g = torch.Generator().manual_seed(3)
    n_ctx, n_tgt = 9, 6  # targets: two known 2-option questions, one unknown 2-option question
    n = n_ctx + n_tgt
    x = torch.randn(1, n, 5, generator=g)
    x[0, :, 1] = 1.0
    x[0, [3, 13, 14], 1] = 0.0  # one unknown context item, one unknown target question
    x[0, :, 2] = torch.rand(n, generator=g) * 0.5 + 0.25  # population mean
    x[0, :, 3:5] = torch.randn(n, k, generator=g) * 0.1  # loadings
    y = torch.rand(1, n, generator=g)
    is_ctx = torch.zeros(1, n, dtype=torch.bool)
    is_ctx[0, :n_ctx] = True
    question = torch.tensor([[0] * n_ctx + [0, 0, 1, 1, 2, 2]])
    batch = GPOBatch(x=x, y=y, is_context=is_ctx, is_target=~is_ctx, question=question)
    with torch.no_grad():
        mean = model(batch).mean[0, n_ctx:]

    xd, yd = x[0].double(), y[0].double()
    use = [i for i in range(n_ctx) if i != 3]
    L, m = xd[use, 3:5], xd[use, 2]
    z = torch.linalg.solve(L.T @ L + lam * torch.eye(k, dtype=torch.float64), L.T @ (yd[use] - m))
    base = (xd[n_ctx:, 2] + xd[n_ctx:, 3:5] @ z).clamp_min(1e-4)
    expected = torch.cat([base[0:2] / base[0:2].sum(), base[2:4] / base[2:4].sum(), torch.full((2,), 0.5)])
    torch.testing.assert_close(mean.double(), expected, atol=1e-5, rtol=0)


def test_ridge_strength_is_learned():
    """The ridge strength is a parameter: the loss has a gradient with respect to it."""
    torch.manual_seed(0)
    model = tiny_model(seed=0, prior_feature=0, prior_rank=3, prior_readout="ridge").train()
    g = _gen(5)
    ep = build_episode(make_questions(g, 5), make_questions(g, 3))
    ep.x[:, 0] = 1.0
    ep.x[:, 1] = 0.3
    model.loss(collate([ep])).backward()
    assert model.log_ridge.grad is not None and float(model.log_ridge.grad.abs()) > 0


def test_text_weight_scales_only_text_read_context_items_in_the_ridge_fit():
    from service.gpo.features import TEXT_FLAG

    torch.manual_seed(0)
    k, n = 2, 6
    cfg = GPOConfig(
        dim_x=2 + k, d_model=8, n_layers=1, n_heads=2, d_ff=8, prior_feature=0, prior_rank=k, prior_readout="ridge"
    )
    model = GPO(cfg)
    x = torch.rand(1, n, 2 + k)
    y = torch.rand(1, n)
    ctx = torch.ones(1, n, dtype=torch.bool)
    x[..., 0] = 1.0  # own priors only: the text weight changes nothing
    z1 = model._ridge_z(x, y, ctx)
    model.cfg.text_weight = 0.05
    assert torch.allclose(model._ridge_z(x, y, ctx), z1)
    x[..., 0] = TEXT_FLAG  # text-read priors: a smaller weight shrinks z towards 0
    z_small = model._ridge_z(x, y, ctx)
    model.cfg.text_weight = 0.5
    assert z_small.norm() < model._ridge_z(x, y, ctx).norm()
