"""Non-neural baselines: behaviour on small datasets, and the cross-check against oqa_baselines.py."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math

import numpy as np
import pytest

from service.training.baselines import (
    BASELINES,
    NEW_QUESTION_BASELINES,
    UnknownQuestionError,
    context_fit,
    evaluate_baselines,
    group_context,
    mixture,
    mixture_weights,
    nearest_group,
    predict_many,
    train_mean,
    uniform,
)
from service.training.datasets import PreferenceDataset, Question
from service.training.metrics import AlignmentScore, js_alignment, wasserstein_alignment
from service.training.splits import make_split, scorable_question_ids

from .conftest import SHARED_HUMAN_RESP, SHARED_OQA_BASELINES

# ------------------------------------------------------------------------------ small dataset

ORD = (1.0, 2.0, 3.0)


def _small() -> PreferenceDataset:
    """Train groups A, B, C; test group T close to B. c1, c2 context; t1, t2 targets; flat has no spread."""
    qs = [Question(q, q, ("x", "y", "z"), ORD) for q in ("c1", "c2", "t1", "t2")]
    qs.append(Question("flat", "flat", ("x", "y"), (1.0, 1.0)))
    qs.append(Question("nominal", "nominal", ("x", "y")))
    d = {
        "A": {
            "c1": [1, 0, 0],
            "c2": [1, 0, 0],
            "t1": [0.6, 0.2, 0.2],
            "t2": [1, 0, 0],
            "flat": [1, 0],
            "nominal": [1, 0],
        },
        "B": {
            "c1": [0, 0, 1],
            "c2": [0, 0.2, 0.8],
            "t1": [0.2, 0.2, 0.6],
            "t2": [0, 1, 0],
            "flat": [0, 1],
            "nominal": [0, 1],
        },
        "C": {
            "c1": [0, 1, 0],
            "c2": [0, 1, 0],
            "t1": [0.2, 0.6, 0.2],
            "t2": [0, 0, 1],
            "flat": [0.5, 0.5],
            "nominal": [0.5, 0.5],
        },
        "T": {
            "c1": [0, 0.1, 0.9],
            "c2": [0, 0.1, 0.9],
            "t1": [0.1, 0.1, 0.8],
            "t2": [0, 0.5, 0.5],
            "flat": [0.3, 0.7],
            "nominal": [0.05, 0.95],
        },
    }
    dists = {g: {q: np.array(v, dtype=float) for q, v in dq.items()} for g, dq in d.items()}
    return PreferenceDataset(qs, list(d), dists)


TRAIN = ["A", "B", "C"]


def test_uniform_and_train_mean() -> None:
    ds = _small()
    ctx = group_context(ds, "T", ["c1", "c2"])
    np.testing.assert_allclose(uniform(ds, TRAIN, ctx, ["t1", "flat"])["t1"], [1 / 3] * 3)
    np.testing.assert_allclose(uniform(ds, TRAIN, ctx, ["flat"])["flat"], [0.5, 0.5])
    np.testing.assert_allclose(train_mean(ds, TRAIN, ctx, ["t1"])["t1"], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(train_mean(ds, TRAIN, {}, ["t2"])["t2"], [1 / 3, 1 / 3, 1 / 3])


def test_context_fit_and_nearest_group() -> None:
    ds = _small()
    ctx = group_context(ds, "T", ["c1", "c2"])
    fit = context_fit(ds, TRAIN, ctx)
    expected = [
        np.mean([1 - wasserstein_alignment(ds.dist(g, q), ds.dist("T", q), ORD) for q in ("c1", "c2")]) for g in TRAIN
    ]
    np.testing.assert_allclose(fit, expected, atol=1e-15)
    assert int(np.argmin(fit)) == 1
    pred = nearest_group(ds, TRAIN, ctx, ["t1", "t2"])
    np.testing.assert_array_equal(pred["t1"], ds.dist("B", "t1"))
    np.testing.assert_array_equal(pred["t2"], ds.dist("B", "t2"))


def test_context_fit_skips_undefined_and_unknown_questions() -> None:
    ds = _small()
    base = context_fit(ds, TRAIN, group_context(ds, "T", ["c1", "c2"]))
    ctx = group_context(ds, "T", ["c1", "c2", "flat"]) | {"brand-new": np.array([1.0, 0.0])}
    np.testing.assert_array_equal(context_fit(ds, TRAIN, ctx), base)
    with pytest.raises(ValueError, match="none of the 2 context questions"):
        context_fit(ds, TRAIN, group_context(ds, "T", ["flat"]) | {"brand-new": np.array([1.0])})
    # non-ordinal context questions use the JS distance
    js_only = context_fit(ds, TRAIN, group_context(ds, "T", ["nominal"]))
    expected = [1 - js_alignment(ds.dist(g, "nominal"), [0.05, 0.95]) for g in TRAIN]
    np.testing.assert_allclose(js_only, expected)
    assert int(np.argmin(js_only)) == 1


def test_mixture_weights_formula() -> None:
    fit = np.array([0.1, 0.2, 0.4])
    w = np.exp(-fit / 0.1 * 3)
    np.testing.assert_allclose(mixture_weights(fit), w / w.sum())
    # a perfect fit (0) uses the 1e-6 floor: all weight on it, no division by zero
    np.testing.assert_allclose(mixture_weights([0.0, 0.3]), [1.0, 0.0], atol=1e-12)
    rows = mixture_weights(np.array([[0.1, 0.2, 0.4], [0.4, 0.2, 0.1]]))
    np.testing.assert_allclose(rows[0], w / w.sum())
    np.testing.assert_allclose(rows[1], (w / w.sum())[::-1])


def test_mixture_prediction() -> None:
    ds = _small()
    ctx = group_context(ds, "T", ["c1", "c2"])
    w = mixture_weights(context_fit(ds, TRAIN, ctx))
    pred = mixture(ds, TRAIN, ctx, ["t1"])["t1"]
    np.testing.assert_allclose(pred, sum(wi * ds.dist(g, "t1") for wi, g in zip(w, TRAIN, strict=True)))
    assert pred.sum() == pytest.approx(1.0)


def test_test_group_answers_are_never_used() -> None:
    ds = _small()
    ctx = group_context(ds, "T", ["c1", "c2"])
    without_t = PreferenceDataset(ds.questions, TRAIN, {g: ds.dists[g] for g in TRAIN})
    for name, fn in BASELINES.items():
        a, b = fn(ds, TRAIN, ctx, ["t1", "t2"]), fn(without_t, TRAIN, ctx, ["t1", "t2"])
        for q in ("t1", "t2"):
            np.testing.assert_array_equal(a[q], b[q], err_msg=name)


def test_new_questions_only_uniform() -> None:
    ds = _small()
    ctx = group_context(ds, "T", ["c1", "c2"])
    new = Question("new", "A question nobody answered", ("a", "b", "c", "d"), (1.0, 2.0, 3.0, 4.0))
    assert NEW_QUESTION_BASELINES == {"uniform"}
    np.testing.assert_allclose(uniform(ds, TRAIN, ctx, [new])["new"], [0.25] * 4)
    for name in ("train_mean", "nearest_group", "mixture"):
        with pytest.raises(UnknownQuestionError, match="only the uniform baseline"):
            BASELINES[name](ds, TRAIN, ctx, [new])
    for name in BASELINES:  # an unknown id cannot even be sized
        with pytest.raises(UnknownQuestionError, match="not in the dataset"):
            BASELINES[name](ds, TRAIN, ctx, ["nope"])


def test_partial_train_answers_use_the_groups_that_answered() -> None:
    ds = _small()
    del ds.dists["B"]["t1"]  # the nearest group did not answer t1
    ctx = group_context(ds, "T", ["c1", "c2"])
    a, c = ds.dist("A", "t1"), ds.dist("C", "t1")
    np.testing.assert_allclose(train_mean(ds, TRAIN, ctx, ["t1"])["t1"], (a + c) / 2)
    fit = context_fit(ds, TRAIN, ctx)
    runner_up = "A" if fit[0] < fit[2] else "C"
    np.testing.assert_array_equal(nearest_group(ds, TRAIN, ctx, ["t1"])["t1"], ds.dist(runner_up, "t1"))
    w = mixture_weights(fit[[0, 2]])
    np.testing.assert_allclose(mixture(ds, TRAIN, ctx, ["t1"])["t1"], w[0] * a + w[1] * c)


def test_predict_many_equals_one_at_a_time() -> None:
    ds = _small()
    contexts = [group_context(ds, g, ["c1", "c2"]) for g in ("T", "A")]
    for name, fn in BASELINES.items():
        many = predict_many(name, ds, TRAIN, contexts, ["t1", "t2", "flat"])
        for ctx, got in zip(contexts, many, strict=True):
            one = fn(ds, TRAIN, ctx, ["t1", "t2", "flat"])
            assert got.keys() == one.keys()
            for q in one:
                np.testing.assert_allclose(got[q], one[q], atol=1e-15)
    with pytest.raises(KeyError, match="unknown baseline"):
        predict_many("oracle", ds, TRAIN, contexts, ["t1"])


def test_evaluate_counts_skipped_questions() -> None:
    ds = _small()
    split = make_split(["A", "B", "C", "T"], ["c1", "c2", "t1", "t2", "flat"], 0.75, 0, 2)
    scores = evaluate_baselines(ds, split)
    assert set(scores) == set(BASELINES)
    n_flat = int("flat" in split.target_qids)
    for s in scores.values():
        assert s.n_skipped == n_flat * len(split.test_groups)
        assert s.n_scored == (len(split.target_qids) - n_flat) * len(split.test_groups)
        assert 0.0 <= s.mean <= 1.0


# --------------------------------------------------------------------- cross-check with the reference

# `python oqa_baselines.py human_resp` (../shared/tools, K=20), per split and seed, mean over every
# (test group, target) pair of 1 - normalised Wasserstein, rounded to 6 decimals.
REFERENCE = {
    (0.4, 0): (0.812695, 0.947932, 0.956112, 0.958356),
    (0.4, 1): (0.814336, 0.942002, 0.958165, 0.960981),
    (0.4, 2): (0.821098, 0.953696, 0.965056, 0.971056),
    (0.6, 0): (0.812220, 0.953037, 0.963099, 0.968909),
    (0.6, 1): (0.807118, 0.940107, 0.952008, 0.956642),
    (0.6, 2): (0.822429, 0.951795, 0.973640, 0.975136),
    (0.8, 0): (0.820241, 0.967922, 0.959564, 0.967201),
    (0.8, 1): (0.802277, 0.930020, 0.946690, 0.945905),
    (0.8, 2): (0.830638, 0.964230, 0.970746, 0.972908),
}
# its printed summary (mean over the 3 seeds, 4 decimals); ours must agree within that rounding
REFERENCE_SUMMARY = {
    0.4: (0.8160, 0.9479, 0.9598, 0.9635),
    0.6: (0.8139, 0.9483, 0.9629, 0.9669),
    0.8: (0.8177, 0.9541, 0.9590, 0.9620),
}
NAMES = ("uniform", "train_mean", "nearest_group", "mixture")
N_TEST = {0.4: 11, 0.6: 7, 0.8: 4}


@pytest.fixture(scope="module")
def measured(opinionqa: PreferenceDataset) -> dict[tuple[float, int], dict[str, AlignmentScore]]:
    qids = scorable_question_ids(opinionqa)  # the reference's 680 keys, in its (sorted) order
    assert len(qids) == 680
    return {
        (split, seed): evaluate_baselines(opinionqa, make_split(opinionqa.groups, qids, split, seed, 20))
        for split, seed in REFERENCE
    }


def test_baselines_match_embedded_reference(measured) -> None:
    for key, ref in REFERENCE.items():
        for name, want in zip(NAMES, ref, strict=True):
            got = measured[key][name]
            assert got.mean == pytest.approx(want, abs=1e-6), (key, name)
            assert got.n_scored == N_TEST[key[0]] * 660 and got.n_skipped == 0


def test_baselines_match_reference_summary(measured) -> None:
    for split, ref in REFERENCE_SUMMARY.items():
        for name, want in zip(NAMES, ref, strict=True):
            mean = np.mean([measured[(split, seed)][name].mean for seed in (0, 1, 2)])
            assert mean == pytest.approx(want, abs=5.1e-5)


@pytest.mark.skipif(not SHARED_OQA_BASELINES.exists(), reason="../shared/tools/oqa_baselines.py not present")
def test_baselines_match_live_reference(measured) -> None:
    if not SHARED_HUMAN_RESP.is_dir():
        pytest.skip("raw OpinionQA data not present")
    spec = importlib.util.spec_from_file_location("oqa_baselines", SHARED_OQA_BASELINES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.run(str(SHARED_HUMAN_RESP), 20)
    lines = out.getvalue().splitlines()
    assert lines[0] == "17 groups, 680 questions with all groups"
    header = lines[1].split()
    assert header == list(NAMES)
    table = {float(r.split()[0]): [float(x) for x in r.split()[1:]] for r in lines[3:]}
    assert set(table) == {0.4, 0.6, 0.8}
    for split, row in table.items():
        for name, want in zip(header, row, strict=True):
            mean = np.mean([measured[(split, seed)][name].mean for seed in (0, 1, 2)])
            assert math.isclose(mean, want, abs_tol=5.1e-5), (split, name, mean, want)
