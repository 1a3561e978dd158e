"""Checkpoints: safetensors + JSON round trip, versioning, corrupted files, atomic saves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import service.gpo.checkpoint as ckpt_mod
from service.gpo.batch import collate
from service.gpo.checkpoint import (
    Checkpoint,
    CheckpointError,
    PriorBank,
    latest_version,
    load_checkpoint,
    next_version,
    save_checkpoint,
)
from service.gpo.prior import PopulationPrior

from .conftest import build_episode, make_questions, predict, tiny_model

META = {
    "embedder": {"id": "tiny-lm", "revision": "abc123", "pooling": "mean", "prompt_version": 2},
    "features": {"use_prior": True, "prior_rank": 2},
    "data_hash": "deadbeef",
}


def _bank() -> PriorBank:
    rng = np.random.default_rng(0)
    prior = PopulationPrior(rng.normal(size=6).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32))
    return PriorBank(prior, {"q-a": (0, 2), "q-b": (2, 4)})


def _ckpt(seed: int = 0, bank: bool = True, **cfg) -> Checkpoint:
    return Checkpoint(
        model=tiny_model(seed, **cfg),
        meta=dict(META),
        bank=_bank() if bank else None,
        metrics={"val_nll": 1.25, "steps": 10},
    )


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return collate([build_episode(make_questions(g, c), make_questions(g, t)) for c, t in ((3, 2), (1, 4))])


def _assert_same_outputs(a, b, batch):
    pa, pb = predict(a, batch), predict(b, batch)
    torch.testing.assert_close(pb.mean, pa.mean, atol=0, rtol=0)
    torch.testing.assert_close(pb.std, pa.std, atol=0, rtol=0)


def test_round_trip(tmp_path, batch):
    ck = _ckpt()
    path = save_checkpoint(ck, tmp_path, "gpo")
    assert path == tmp_path / "gpo" / "v0001" and ck.path == path
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]

    loaded = load_checkpoint(path)
    assert loaded.path == path and not loaded.model.training
    assert loaded.model.cfg == ck.model.cfg
    for k, v in ck.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v, atol=0, rtol=0, msg=k)
    _assert_same_outputs(ck.model, loaded.model, batch)

    for k, v in META.items():
        assert loaded.meta[k] == v
    assert loaded.meta["name"] == "gpo" and loaded.version == "v0001"
    assert "architecture" not in loaded.meta and "prior_bank" not in loaded.meta
    assert loaded.metrics == ck.metrics

    assert loaded.bank is not None
    np.testing.assert_array_equal(loaded.bank.prior.mean, ck.bank.prior.mean)
    np.testing.assert_array_equal(loaded.bank.prior.loadings, ck.bank.prior.loadings)
    assert loaded.bank.rows == ck.bank.rows
    np.testing.assert_array_equal(loaded.bank.lookup("q-a", 2), [0, 1])
    np.testing.assert_array_equal(loaded.bank.lookup("q-b", 4), [2, 3, 4, 5])
    assert loaded.bank.lookup("q-b", 3) is None  # option count mismatch
    assert loaded.bank.lookup("unknown", 2) is None

    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == ck.model.cfg.to_dict()


def test_round_trip_without_bank(tmp_path, batch):
    ck = _ckpt(seed=3, bank=False)
    loaded = load_checkpoint(save_checkpoint(ck, tmp_path, "plain"))
    assert loaded.bank is None
    _assert_same_outputs(ck.model, loaded.model, batch)


def test_versions_and_latest(tmp_path, batch):
    assert next_version(tmp_path, "gpo") == "v0001"
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "gpo")
    first, second = _ckpt(seed=1), _ckpt(seed=2)
    p1 = save_checkpoint(first, tmp_path, "gpo")
    assert next_version(tmp_path, "gpo") == "v0002"
    p2 = save_checkpoint(second, tmp_path, "gpo")
    assert (p1.name, p2.name) == ("v0001", "v0002")
    assert latest_version(tmp_path, "gpo") == p2

    latest = load_checkpoint(tmp_path / "gpo")
    assert latest.path == p2 and latest.version == "v0002"
    _assert_same_outputs(second.model, latest.model, batch)
    older = load_checkpoint(p1)
    assert older.version == "v0001"
    _assert_same_outputs(first.model, older.model, batch)

    # an incomplete version folder (no config.json) is not "latest"; an existing version is not overwritten
    (tmp_path / "gpo" / "v0007").mkdir()
    assert load_checkpoint(tmp_path / "gpo").path == p2
    with pytest.raises(CheckpointError):
        save_checkpoint(_ckpt(seed=4), tmp_path, "gpo", version="v0001")


def test_version_numbers_sort_numerically(tmp_path):
    save_checkpoint(_ckpt(seed=1, bank=False), tmp_path, "gpo", version="v9999")
    p = save_checkpoint(_ckpt(seed=2, bank=False), tmp_path, "gpo")
    assert p.name == "v10000"
    assert load_checkpoint(tmp_path / "gpo").path == p


def test_resaving_same_checkpoint_records_new_version(tmp_path):
    ck = _ckpt(seed=5, bank=False)
    save_checkpoint(ck, tmp_path, "gpo")
    p2 = save_checkpoint(ck, tmp_path, "gpo")
    assert p2.name == "v0002"
    assert json.loads((p2 / "config.json").read_text())["version"] == "v0002"
    assert load_checkpoint(tmp_path / "gpo").version == "v0002"


# ---------------------------------------------------------------- broken checkpoints


def _saved(tmp_path, **kw) -> Path:
    return save_checkpoint(_ckpt(**kw), tmp_path, "gpo")


def test_missing_weights_file_raises(tmp_path):
    path = _saved(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_malformed_config_raises(tmp_path):
    path = _saved(tmp_path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_wrong_format_version_raises(tmp_path):
    path = _saved(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = 999
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_weights_with_missing_and_extra_keys_raise(tmp_path):
    path = _saved(tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    dropped = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.")}
    save_file(dropped, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)
    save_file({**tensors, "model.extra.weight": torch.zeros(2)}, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(path)


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupted_weights_file_raises_checkpoint_error(tmp_path, corruption):
    path = _saved(tmp_path)
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(b"\x00garbage" * 64 if corruption == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_weights_of_another_width_raise_checkpoint_error(tmp_path):
    path = _saved(tmp_path)
    other = _saved(tmp_path / "other", seed=1, d_model=32, d_ff=32)
    (path / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_weights_without_prior_tensors_raise_checkpoint_error(tmp_path):
    path = _saved(tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("prior.")}, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


# ---------------------------------------------------------------- atomic saves


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_ckpt(), tmp_path, "gpo")
    root = tmp_path / "gpo"
    assert list(root.iterdir()) == []  # neither v0001 nor a hidden temp folder
    assert next_version(tmp_path, "gpo") == "v0001"
    with pytest.raises(CheckpointError):
        load_checkpoint(root)

    monkeypatch.undo()
    assert save_checkpoint(_ckpt(), tmp_path, "gpo").name == "v0001"
    assert [p.name for p in root.iterdir()] == ["v0001"]


def test_failed_config_write_leaves_nothing_behind(tmp_path, monkeypatch):
    """A failure after the weights were written (unserialisable meta) also cleans up."""
    ck = _ckpt()
    ck.meta = {**ck.meta, "bad": object()}
    with pytest.raises(TypeError):
        save_checkpoint(ck, tmp_path, "gpo")
    assert list((tmp_path / "gpo").iterdir()) == []


def test_text_prior_features_are_centred_within_the_question_and_round_trip():
    import numpy as np

    from service.gpo.features import TEXT_FLAG, TextPrior

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 5))
    item_q = np.repeat(np.arange(10), 3)
    text = TextPrior.fit(emb, item_q, rng.standard_normal((30, 3)), alpha=0.5)
    f = text.features(emb, item_q, np.full(30, 3))
    assert f.shape == (30, 4) and np.all(f[:, 0] == TEXT_FLAG)
    for q in range(10):  # each question's means sum to 1 and its loadings to 0
        assert abs(f[item_q == q, 1].sum() - 1) < 1e-5
        assert np.allclose(f[item_q == q, 2:].sum(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(text.question_features(emb[:3]), f[:3], rtol=1e-6)
    again = TextPrior.from_checkpoint(text.to_checkpoint())
    np.testing.assert_allclose(again.features(emb, item_q, np.full(30, 3)), f, rtol=1e-5, atol=1e-6)
    assert TextPrior.from_checkpoint({}) is None
