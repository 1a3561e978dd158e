"""The linear probe (service.training.probe): new questions read from their options' embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from service.gpo.features import centred_features
from service.training.baselines import group_context, predict_many
from service.training.datasets import PreferenceDataset, Question
from service.training.items import build_item_table
from service.training.metrics import group_contrast, question_alignments
from service.training.probe import linear_probe_many


def text_dataset(n_groups: int = 20, n_questions: int = 90, seed: int = 0, informative: bool = True):
    """Answers softmax(bias + loadings @ z_group) with each option's embedding holding its bias and loadings
    (plus a vector shared by the question's options, and noise): the text carries the answers' structure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_groups, 2))
    questions, dists, emb = [], {f"g{i}": {} for i in range(n_groups)}, []
    for qi in range(n_questions):
        n_opt = int(rng.integers(3, 5))
        q = Question(f"q{qi:03d}", f"Question {qi}?", tuple(f"o{j}" for j in range(n_opt)), tuple(range(1, n_opt + 1)))
        questions.append(q)
        bias, load = rng.normal(size=n_opt) * 0.5, rng.normal(size=(n_opt, 2))
        shared = rng.normal(size=6) * 3
        for j in range(n_opt):
            signal = np.concatenate([[bias[j]], load[j]]) if informative else rng.normal(size=3)
            emb.append(np.concatenate([signal, np.zeros(3)]) + shared + rng.normal(size=6) * 0.1)
        for gi in range(n_groups):
            logits = bias + load @ z[gi]
            p = np.exp(logits - logits.max())
            dists[f"g{gi}"][q.qid] = p / p.sum()
    ds = PreferenceDataset(questions=questions, groups=list(dists), dists=dists)
    return ds, build_item_table(questions, np.array(emb, dtype=np.float32))


def protocol(ds):
    train, test = ds.groups[:12], ds.groups[12:]
    qids = [q.qid for q in ds.questions]
    known, new = qids[:70], qids[70:]
    contexts = [group_context(ds, g, known[:15]) for g in test]
    return train, test, known, new, contexts


def scores(ds, test, new, preds):
    align = [
        float(question_alignments(ds.question(q), p[q], ds.dist(g, q)))
        for g, p in zip(test, preds, strict=True)
        for q in new
    ]
    contrast = group_contrast((ds.question(q), [p[q] for p in preds], [ds.dist(g, q) for g in test]) for q in new)
    return float(np.mean(align)), contrast.r


def test_centred_features_sum_to_zero_within_each_question():
    emb = np.random.default_rng(0).normal(size=(7, 4))
    item_q = np.array([0, 0, 0, 1, 1, 2, 2])
    x = centred_features(emb, item_q, emb.mean(0), emb.std(0))
    for q in range(3):
        assert np.allclose(x[item_q == q].sum(axis=0), 0)


def test_probe_reads_new_questions_from_their_text_and_not_from_noise():
    ds, table = text_dataset()
    train, test, known, new, contexts = protocol(ds)
    probe = linear_probe_many(ds, table, train, known, contexts, new)
    uniform = predict_many("uniform", ds, train, contexts, new)
    a_probe, r_probe = scores(ds, test, new, probe)
    a_uni, r_uni = scores(ds, test, new, uniform)
    assert r_uni == 0.0
    assert r_probe > 0.6 and a_probe > a_uni + 0.02
    # the same answers with embeddings that carry nothing: the contrast goes
    noise_ds, noise_table = text_dataset(informative=False)
    _, _, _, _, noise_ctx = protocol(noise_ds)
    noise = linear_probe_many(noise_ds, noise_table, train, known, noise_ctx, new)
    _, r_noise = scores(noise_ds, test, new, noise)
    assert r_noise < r_probe - 0.3


def test_a_known_target_keeps_its_own_train_mean_when_the_context_is_empty():
    ds, table = text_dataset()
    train, _, known, _, _ = protocol(ds)
    (pred,) = linear_probe_many(ds, table, train, known, [{}], known[:5])
    for q in known[:5]:
        mean = np.mean([ds.dist(g, q) for g in train], axis=0)
        assert np.allclose(pred[q], mean / mean.sum(), atol=1e-6)


def test_no_held_out_answer_reaches_the_probe():
    """Test groups' answers to targets, and anyone's answers to new questions, change no prediction."""
    ds, table = text_dataset()
    train, test, known, new, contexts = protocol(ds)
    before = linear_probe_many(ds, table, train, known, contexts, new)
    rng = np.random.default_rng(5)
    changed = {g: dict(d) for g, d in ds.dists.items()}
    for g in ds.groups:  # every group's answers to the new questions, and test groups' non-context answers
        for q in new + ([q for q in known if q not in contexts[0]] if g in test else []):
            changed[g][q] = rng.dirichlet(np.ones(ds.question(q).n_options))
    ds2 = PreferenceDataset(questions=ds.questions, groups=ds.groups, dists=changed)
    after = linear_probe_many(ds2, table, train, known, contexts, new)
    for b, a in zip(before, after, strict=True):
        for q in new:
            np.testing.assert_array_equal(b[q], a[q])


def test_probe_refuses_without_known_answers():
    ds, table = text_dataset(n_questions=10)
    with pytest.raises(ValueError, match="no known question"):
        linear_probe_many(ds, table, ds.groups[:3], [], [{}], ["q000"])


def test_a_context_of_new_questions_personalises_through_the_text():
    """A group that brings its own survey: context questions no train group answered still fit its factors."""
    ds, table = text_dataset()
    train, test, known, new, _ = protocol(ds)
    known, ctx_q, targets = known[:50], known[50:65], known[65:] + new  # context: 15 questions new to the probe
    contexts = [group_context(ds, g, ctx_q) for g in test]
    preds = linear_probe_many(ds, table, train, known, contexts, targets)
    _, r = scores(ds, test, targets, preds)
    assert r > 0.5
    alike = linear_probe_many(ds, table, train, known, [{} for _ in test], targets)
    assert scores(ds, test, targets, alike)[1] == 0.0
