"""Fixtures for the training tests: the shipped OpinionQA and NYT books datasets, and the shared raw data if present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.training.datasets import PreferenceDataset
from service.training.nytbooks import load_nytbooks
from service.training.opinionqa import load_opinionqa
from service.training.ratings import RatingsDataset

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"  # present in CI and on dev machines; the project must not need it
SHARED_HUMAN_RESP = SHARED / "data" / "opinionqa" / "human_resp"
SHARED_OQA_BASELINES = SHARED / "tools" / "oqa_baselines.py"


@pytest.fixture(scope="session")
def opinionqa() -> PreferenceDataset:
    """The shipped OpinionQA dataset, read once per session (treat it as read-only)."""
    return load_opinionqa()


@pytest.fixture(scope="module")
def nyt() -> RatingsDataset:
    """The shipped NYT books ratings (read once per test module)."""
    return load_nytbooks()


@pytest.fixture(scope="session")
def human_resp() -> Path:
    """The raw OpinionQA human_resp/ folder under ../shared; skips the test when it is absent."""
    if not (SHARED_HUMAN_RESP / "American_Trends_Panel_W26").is_dir():
        pytest.skip(f"raw OpinionQA data not found at {SHARED_HUMAN_RESP}")
    return SHARED_HUMAN_RESP


@pytest.fixture
def small_ratings_file(tmp_path: Path) -> Path:
    """A per-person ratings JSONL of 20 people, each rating 12 of 20 short replies 1..5 at random."""
    from service.training.ratings import RatedItem, RatingsDataset, write_ratings_jsonl

    rng = np.random.default_rng(0)
    items = [RatedItem(f"r{j}", f"reply {j} about topic {j % 5}") for j in range(20)]
    scores = {
        f"p{i}": {f"r{j}": float(rng.integers(1, 6)) for j in rng.choice(20, 12, replace=False)} for i in range(20)
    }
    path = tmp_path / "ratings.jsonl"
    write_ratings_jsonl(RatingsDataset(items, list(scores), scores, (1.0, 5.0), prompt="Rate this reply."), path)
    return path
