"""The individuals section of RESULTS.md: tables from the records, the margin with its intervals, the splice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.training.individuals_report import END, START, margin, write_individuals_report

METHODS = ("gpo", "content_factor", "global_mean", "context_mean", "knn", "reward_model", "latent_factor")


def records_for(edge: float) -> tuple[list[dict], dict]:
    """Three seeds, two context sizes; GPO is `edge` above the reward model for every person."""
    rng = np.random.default_rng(0)
    records = []
    for seed in range(3):
        people = [f"p{i}" for i in range(20)]
        base = {p: float(rng.uniform(0.5, 0.7)) for p in people}
        for k in (1, 10):
            for m in METHODS:
                shift = {"gpo": edge, "content_factor": edge, "context_mean": -0.1}.get(
                    m, -0.01 * (m != "reward_model")
                )
                per = {p: base[p] + shift for p in people}
                records.append(
                    {
                        "method": m,
                        "seed": seed,
                        "n_context": k,
                        "n_people": 20,
                        "pairwise": float(np.mean(list(per.values()))),
                        "spearman": 0.2,
                        "rmse": 1.0,
                        "exact": 0.3,
                        "per_person_pairwise": per,
                    }
                )
    meta = {
        "main_context": 10,
        "train_frac": 0.6,
        "command": "gpo eval-individuals",
        "wall_s": 60.0,
        "training": {"gpo/0": {"best_step": 0}, "gpo/1": {"best_step": 300}, "gpo/2": {"best_step": 0}},
    }
    return records, meta


def test_margin_is_the_paired_difference_with_intervals() -> None:
    records, _ = records_for(0.02)
    g = margin(records, 10)
    assert g["mean"] == pytest.approx(0.02)
    assert g["per_seed"] == pytest.approx([0.02] * 3)
    assert g["bootstrap_ci95"] == pytest.approx([0.02, 0.02])
    assert g["people"] == 60


def test_the_section_is_written_between_markers_and_replaced(tmp_path: Path) -> None:
    page = tmp_path / "RESULTS.md"
    page.write_text("# Results\n\nOpinionQA part.\n")
    records, meta = records_for(0.02)
    write_individuals_report(records, meta, page)
    text = page.read_text()
    assert text.startswith("# Results\n\nOpinionQA part.\n") and text.count(START) == 1 and text.count(END) == 1
    assert "| GPO, ratings (ours) | 3 | 0.6" in text
    assert "**Margin over the non-personalised reward model at k=10:** +0.0200" in text
    assert "That happened in 1 of 3 seeds" in text
    assert (tmp_path / "results" / "individuals_context.png").stat().st_size > 0
    records, meta = records_for(-0.01)
    write_individuals_report(records, meta, page)
    text = page.read_text()
    assert text.count(START) == 1 and "at k=10:** -0.0100" in text and "OpinionQA part." in text
