"""Versioned checkpoints: safetensors weights + JSON config (no pickle).

Layout: <store>/<name>/<version>/{config.json, model.safetensors, metrics.json}. Versions are
"v0001", "v0002", ...; the latest is the highest. The config records the architecture, the item
feature spec, the embedder (id, revision, pooling, prompt template version), the training data hash
and the population-prior bank (question keys -> rows of the prior tensors).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from service.gpo.model import GPO, GPOConfig
from service.gpo.prior import PopulationPrior

FORMAT_VERSION = 1
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, malformed or incompatible."""


@dataclass
class PriorBank:
    """Population prior of known questions: question key -> its rows in `prior` (one per option)."""

    prior: PopulationPrior
    rows: dict[str, tuple[int, int]]  # key -> (start, n_options)

    def lookup(self, key: str, n_options: int) -> np.ndarray | None:
        """Item rows of a known question with that many options, else None."""
        hit = self.rows.get(key)
        if hit is None or hit[1] != n_options:
            return None
        return np.arange(hit[0], hit[0] + hit[1])


@dataclass
class Checkpoint:
    model: GPO
    meta: dict  # everything in config.json besides the architecture
    bank: PriorBank | None = None
    metrics: dict = field(default_factory=dict)
    path: Path | None = None
    # Named arrays the serving features need besides the model (e.g. a rating model's content basis).
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.meta.get("version", "unversioned")


def next_version(store: Path, name: str) -> str:
    """The version string after the latest under <store>/<name> (v0001 when none)."""
    root = Path(store) / name
    nums = [int(m.group(1)) for p in root.glob("v*") if (m := _VERSION_RE.match(p.name))] if root.exists() else []
    return f"v{max(nums, default=0) + 1:04d}"


def latest_version(store: Path, name: str) -> Path:
    root = Path(store) / name
    versions = (
        sorted(
            (int(m.group(1)), p)
            for p in root.glob("v*")
            if (m := _VERSION_RE.match(p.name)) and (p / "config.json").exists()
        )
        if root.exists()
        else []
    )
    if not versions:
        raise CheckpointError(f"no checkpoint versions under {root}")
    return versions[-1][1]


def save_checkpoint(ckpt: Checkpoint, store: Path, name: str, version: str | None = None) -> Path:
    """Write a checkpoint atomically (temp folder, then rename); returns its folder."""
    version = version or next_version(store, name)
    final = Path(store) / name / version
    if final.exists():
        raise CheckpointError(f"{final} already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
    try:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()}
        bank_rows = None
        if ckpt.bank is not None:
            tensors["prior.mean"] = torch.from_numpy(np.ascontiguousarray(ckpt.bank.prior.mean))
            tensors["prior.loadings"] = torch.from_numpy(np.ascontiguousarray(ckpt.bank.prior.loadings))
            bank_rows = {k: list(v) for k, v in ckpt.bank.rows.items()}
        for k, v in ckpt.extra.items():
            tensors[f"extra.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
        save_file(tensors, str(tmp / "model.safetensors"))
        config = {
            **ckpt.meta,  # first: the name and version written here win over a re-saved checkpoint's
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": version,
            "architecture": ckpt.model.cfg.to_dict(),
            "prior_bank": bank_rows,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(ckpt.metrics, indent=2, sort_keys=True))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ckpt.meta = {**ckpt.meta, "name": name, "version": version}
    ckpt.path = final
    return final


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Load a checkpoint folder (or <store>/<name>, meaning its latest version)."""
    path = Path(path)
    if not (path / "config.json").exists():
        path = latest_version(path.parent, path.name)
    try:
        config = json.loads((path / "config.json").read_text())
        tensors = load_file(str(path / "model.safetensors"))
    except Exception as e:  # OSError, JSON errors, SafetensorError (which derives from Exception only)
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config.get('format_version')} != {FORMAT_VERSION}")
    model = GPO(GPOConfig.from_dict(config["architecture"]))
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not match the architecture: {e}") from e
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the architecture (missing {missing}, unexpected {unexpected})"
        )
    model.to(device).eval()
    bank = None
    if config.get("prior_bank") is not None:
        if "prior.mean" not in tensors or "prior.loadings" not in tensors:
            raise CheckpointError(f"{path}: config lists a prior bank but the weights hold no prior tensors")
        prior = PopulationPrior(tensors["prior.mean"].numpy(), tensors["prior.loadings"].numpy())
        bank = PriorBank(prior, {k: (int(v[0]), int(v[1])) for k, v in config["prior_bank"].items()})
    meta = {k: v for k, v in config.items() if k not in ("architecture", "prior_bank", "format_version")}
    metrics_path = path / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    extra = {k[len("extra.") :]: v.numpy() for k, v in tensors.items() if k.startswith("extra.")}
    return Checkpoint(model=model, meta=meta, bank=bank, metrics=metrics, path=path, extra=extra)
