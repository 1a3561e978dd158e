"""GPO for ratings (one score per item) and comparisons (one probability per pair): the same symmetries as for
choices, the kind's readout and loss, the cached-context path, and checkpoints that record their kind."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from service.gpo.batch import Episode, collate
from service.gpo.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from service.gpo.model import GPO, GPOConfig

from .conftest import DIM_X, tiny_model

ATOL = 1e-5
KIND_MODELS = {
    "rating": dict(kind="rating"),
    "rating+ridge": dict(kind="rating", prior_feature=0, prior_rank=3, prior_readout="ridge"),
    "comparison": dict(kind="comparison"),
    "comparison+readout": dict(
        kind="comparison",
        comparison_head="score",
        prior_feature=0,
        prior_rank=3,
        prior_readout="ridge",
        ridge_init=2.0,
        pair_beta_init=4.0,
    ),
}


@pytest.fixture(scope="module", params=list(KIND_MODELS))
def model(request) -> GPO:
    return tiny_model(seed=0, **KIND_MODELS[request.param])


def episode(gen: torch.Generator, n_ctx: int, n_tgt: int) -> Episode:
    """One token per item: x features (the first 5 columns shaped like a prior block), y in [0, 1]."""
    n = n_ctx + n_tgt
    x = torch.randn(n, DIM_X, generator=gen)
    x[:, 0] = 1.0  # known flag
    x[:, 1] = torch.rand(n, generator=gen)  # population mean score
    y = torch.rand(n, generator=gen)
    is_ctx = torch.zeros(n, dtype=torch.bool)
    is_ctx[:n_ctx] = True
    return Episode(x=x, y=y, is_context=is_ctx, question=torch.arange(n))


def targets(model: GPO, ep: Episode) -> torch.Tensor:
    with torch.no_grad():
        pred = model(collate([ep]))
    return pred.mean[0, : ep.y.shape[0]][~ep.is_context]


def reorder(ep: Episode, order: torch.Tensor) -> Episode:
    return Episode(x=ep.x[order], y=ep.y[order], is_context=ep.is_context[order], question=torch.arange(len(order)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_context_permutation_invariance(model: GPO, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ep = episode(g, 7, 4)
    perm = torch.cat([torch.randperm(7, generator=g), torch.arange(7, 11)])
    assert torch.allclose(targets(model, ep), targets(model, reorder(ep, perm)), atol=ATOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_target_equivariance_and_independence(model: GPO, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ep = episode(g, 6, 5)
    base = targets(model, ep)
    perm = torch.randperm(5, generator=g)
    permuted = targets(model, reorder(ep, torch.cat([torch.arange(6), 6 + perm])))
    assert torch.allclose(permuted, base[perm], atol=ATOL)
    alone = targets(model, reorder(ep, torch.cat([torch.arange(6), torch.tensor([8])])))  # the other targets gone
    assert torch.allclose(alone, base[2:3], atol=ATOL)


def test_context_matters_and_target_y_does_not(model: GPO) -> None:
    g = torch.Generator().manual_seed(3)
    ep = episode(g, 6, 3)
    y2 = ep.y.clone()
    y2[6:] = torch.rand(3, generator=g)  # other true scores of the targets: no input
    assert torch.allclose(targets(model, ep), targets(model, Episode(ep.x, y2, ep.is_context, ep.question)), atol=0)
    y3 = ep.y.clone()
    y3[:6] = 1.0 - y3[:6]
    assert not torch.allclose(targets(model, ep), targets(model, Episode(ep.x, y3, ep.is_context, ep.question)))


def test_cached_context_equals_the_full_forward(model: GPO) -> None:
    g = torch.Generator().manual_seed(4)
    eps = [episode(g, 5, 3), episode(g, 9, 2)]
    batch = collate(eps)
    with torch.no_grad():
        full = model(batch)
        for b, ep in enumerate(eps):
            n_ctx = int(ep.is_context.sum())
            state = model.encode_context(ep.x[None, :n_ctx], ep.y[None, :n_ctx], torch.ones(1, n_ctx, dtype=torch.bool))
            n_t = ep.y.shape[0] - n_ctx
            cached = model.predict_targets(
                state, ep.x[None, n_ctx:], torch.arange(n_t)[None], torch.ones(1, n_t, dtype=torch.bool)
            )
            assert torch.allclose(cached.mean[0], full.mean[b, n_ctx : n_ctx + n_t], atol=ATOL)
            assert torch.allclose(cached.std[0], full.std[b, n_ctx : n_ctx + n_t], atol=ATOL)


def test_rating_ridge_readout_starts_at_the_latent_factor_estimate() -> None:
    """Untrained, a ridge rating model predicts mean + loadings @ z, z the ridge fit of the context residuals."""
    model = tiny_model(seed=1, **KIND_MODELS["rating+ridge"])
    g = torch.Generator().manual_seed(5)
    ep = episode(g, 8, 4)
    got = targets(model, ep)
    load, mean, y = ep.x[:, 2:5].double(), ep.x[:, 1].double(), ep.y.double()
    ridge = float(model.log_ridge.detach().exp())
    c = slice(0, 8)
    z = torch.linalg.solve(
        load[c].T @ load[c] + ridge * torch.eye(3, dtype=torch.float64), load[c].T @ (y[c] - mean[c])
    )
    expected = (mean + load @ z)[8:]
    assert torch.allclose(got.double(), expected, atol=1e-4)


def test_comparison_readout_starts_at_one_newton_step_of_the_pair_logistic_fit() -> None:
    """Untrained, a comparison model with the readout scores a response beta * mean + loadings @ u, u one Newton step
    from 0 of the ridge logistic regression of the context pairs' labels on their loading differences (offset
    beta * mean difference): the closed form of benchmarks/experiments/comparison_readout.py."""
    model = tiny_model(seed=2, **KIND_MODELS["comparison+readout"])
    g = torch.Generator().manual_seed(6)
    ep = episode(g, 9, 4)
    y = (ep.y > 0.5).float()  # context labels: 1 when a was preferred
    ep = Episode(ep.x, y, ep.is_context, ep.question)
    with torch.no_grad():
        got = model(collate([ep])).logits[0, 9:].double()
    beta, ridge = float(model.log_beta.detach().exp()), float(model.log_ridge.detach().exp())
    d, off, lab = ep.x[:9, 2:5].double(), beta * ep.x[:9, 1].double(), y[:9].double()
    p = torch.sigmoid(off)
    hess = (d * (p * (1 - p))[:, None]).T @ d + ridge * torch.eye(3, dtype=torch.float64)
    u = torch.linalg.solve(hess, d.T @ (lab - p))
    expected = beta * ep.x[9:, 1].double() + ep.x[9:, 2:5].double() @ u
    assert torch.allclose(got, expected, atol=1e-4)
    # opposite context labels move the scores in opposite directions around the mean-only score
    flipped = Episode(ep.x, torch.where(ep.is_context, 1.0 - y, y), ep.is_context, ep.question)
    with torch.no_grad():
        other = model(collate([flipped])).logits[0, 9:].double()
    assert not torch.allclose(got, other)


def test_comparison_is_a_probability_with_a_cross_entropy_loss() -> None:
    model = tiny_model(seed=2, kind="comparison")
    g = torch.Generator().manual_seed(6)
    ep = episode(g, 6, 4)
    ep = Episode(ep.x, (ep.y > 0.5).float(), ep.is_context, ep.question)
    batch = collate([ep])
    pred = model(batch)
    p = pred.mean[0, 6:10]
    assert bool(((p > 0) & (p < 1)).all())
    manual = F.binary_cross_entropy(p, batch.y[0, 6:10], reduction="sum")
    assert math.isclose(float(model.loss(batch)), float(manual), rel_tol=1e-5)


def test_rating_loss_is_the_gaussian_nll() -> None:
    model = tiny_model(seed=3, kind="rating")
    batch = collate([episode(torch.Generator().manual_seed(7), 5, 3)])
    pred = model(batch)
    m, s, y = pred.mean[0, 5:8], pred.std[0, 5:8], batch.y[0, 5:8]
    manual = (0.5 * ((y - m) / s) ** 2 + s.log() + 0.5 * math.log(2 * math.pi)).sum()
    assert math.isclose(float(model.loss(batch)), float(manual), rel_tol=1e-5)


def test_training_steps_reduce_the_loss_of_each_kind() -> None:
    for kind in ("rating", "comparison"):
        torch.manual_seed(0)
        model = GPO(GPOConfig(dim_x=DIM_X, d_model=16, n_layers=1, n_heads=2, d_ff=16, kind=kind)).train()
        g = torch.Generator().manual_seed(8)
        w = torch.randn(DIM_X, generator=g)
        eps = []
        for _ in range(8):  # a learnable rule: y depends on the item features
            ep = episode(g, 6, 6)
            y = torch.sigmoid(ep.x @ w)
            eps.append(Episode(ep.x, (y > 0.5).float() if kind == "comparison" else y, ep.is_context, ep.question))
        batch = collate(eps)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        first = float(model.loss(batch))
        for _ in range(60):
            opt.zero_grad()
            model.loss(batch).backward()
            opt.step()
        assert float(model.loss(batch)) < 0.8 * first, kind


def test_checkpoints_record_their_kind(tmp_path) -> None:
    model = tiny_model(seed=0, kind="rating")
    path = save_checkpoint(Checkpoint(model=model, meta={}), tmp_path / "store", "ratings")
    loaded = load_checkpoint(path)
    assert loaded.model.cfg.kind == "rating"
    assert GPOConfig.from_dict({"dim_x": 4}).kind == "choice"  # checkpoints from before kinds are choice models


def test_bad_kinds_are_refused() -> None:
    with pytest.raises(AssertionError, match="unknown kind"):
        GPO(GPOConfig(dim_x=4, kind="ranking"))
    with pytest.raises(AssertionError, match="unknown comparison_head"):
        GPO(GPOConfig(dim_x=4, kind="comparison", comparison_head="triplet"))
    with pytest.raises(AssertionError, match="score head only"):  # the pair head has no readout
        GPO(GPOConfig(dim_x=8, kind="comparison", prior_feature=0, prior_rank=3, prior_readout="ridge"))
    with pytest.raises(AssertionError, match="score head only"):  # nor the mean readout
        GPO(GPOConfig(dim_x=8, kind="comparison", comparison_head="score", prior_feature=0, prior_readout="mean"))
