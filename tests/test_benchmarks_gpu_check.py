"""benchmarks/gpu_check.py on CPU: the reference path's pieces run on a tiny LM, and without CUDA the report says
loudly that the 8-bit branch was skipped (the GPU run itself needs a lent machine)."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import gpu_check
from service.embedder.embed import Embedder


def test_rates_on_a_tiny_lm_and_a_report_that_says_8bit_was_skipped(tiny_lm):
    embedder = Embedder(tiny_lm, pooling="mean", batch_size=4)
    texts = [f"Question {i}? Answer: option {i % 3}" for i in range(10)]
    vectors, rate = gpu_check.embed_rate(embedder, texts, torch.device("cpu"))
    assert vectors.shape == (10, embedder.dim) and rate > 0
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-5)
    gen = gpu_check.generation_rate(tiny_lm, n=2, max_tokens=4, device=torch.device("cpu"))
    assert gen["new_tokens"] > 0 and gen["tokens_per_s"] > 0
    variant = {"dtype": "torch.float32", "load_s": 0.1, "memory_gb": None, "embeddings_per_s": round(rate, 1)}
    report = {
        "device": "cpu",
        "torch": torch.__version__,
        "model": "tiny",
        "checkpoint": "x/v0001",
        "questions": 3,
        "texts": 10,
        "eight_bit_skipped": True,
        "variants": {"reference": {**variant, "alignment": 0.9, "generation": gen}},
    }
    text = gpu_check.markdown(report, "benchmarks/gpu_check.py")
    assert "**8-bit skipped: no CUDA device here.**" in text and "| reference | torch.float32 |" in text
    report |= {"eight_bit_skipped": False, "variants": {**report["variants"], "8-bit": report["variants"]["reference"]}}
    report["eight_bit_vs_reference"] = {
        "cosine_mean": 0.999,
        "cosine_min": 0.99,
        "cosine_p5": 0.995,
        "max_probability_difference": 0.01,
    }
    text = gpu_check.markdown(report, "benchmarks/gpu_check.py")
    assert "skipped" not in text and "cosine of the pooled item vectors mean 0.999" in text
