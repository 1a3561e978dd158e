"""The pure helpers of the baseline section (benchmarks/baseline.py): the ABBA order, the medians and ratios of the
rounds, the reading of `git status --porcelain`, and the section's markdown (no process, no git)."""

from __future__ import annotations

import pytest

from benchmarks.baseline import abba_order, has_uncommitted_changes, markdown, summarize


def test_abba_order_alternates_and_balances() -> None:
    order = abba_order(5)
    assert order == [
        ("current", "baseline"),
        ("baseline", "current"),
        ("current", "baseline"),
        ("baseline", "current"),
        ("current", "baseline"),
    ]
    assert abba_order(0) == []
    even = abba_order(8, ("a", "b"))
    assert sum(o[0] == "a" for o in even) == sum(o[0] == "b" for o in even) == 4


def _round(cur: tuple[float, float, float], base: tuple[float, float, float]) -> dict:
    def side(v: tuple[float, float, float]) -> dict:
        return {"p50_ms": v[0], "p99_ms": v[1], "rps": v[2], "statuses": {"200": 1}}

    return {"order": ["current", "baseline"], "current": side(cur), "baseline": side(base)}


def test_summarize_medians_ratios_and_band() -> None:
    rounds = [
        _round((2.0, 4.0, 400.0), (4.0, 8.0, 200.0)),  # ratios p50 0.5, rps 2
        _round((3.0, 6.0, 300.0), (3.0, 6.0, 300.0)),  # 1, 1
        _round((1.0, 2.0, 500.0), (5.0, 10.0, 100.0)),  # 0.2, 5
    ]
    s = summarize(rounds)
    assert s["median"]["current"] == {"p50_ms": 2.0, "p99_ms": 4.0, "rps": 400.0}
    assert s["median"]["baseline"] == {"p50_ms": 4.0, "p99_ms": 8.0, "rps": 200.0}
    # ratios of the medians, not medians of the ratios
    assert s["ratio"] == {"p50_ms": 0.5, "p99_ms": 0.5, "rps": 2.0}
    assert s["round_ratio_min_max"]["p50_ms"] == [0.2, 1.0]
    assert s["round_ratio_min_max"]["rps"] == [1.0, 5.0]


def test_summarize_even_number_of_rounds_takes_the_middle_mean() -> None:
    rounds = [_round((float(v), 1.0, 1.0), (1.0, 1.0, 1.0)) for v in (1, 2, 3, 10)]
    assert summarize(rounds)["median"]["current"]["p50_ms"] == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("porcelain", "expected"),
    [
        ("", False),
        ("?? service/new.py\n", False),  # untracked: not a change to a tracked file
        (" M service/inference.py\n", True),
        ("M  service/gpo/features.py\n", True),
        (" M benchmarks/run.py\n M README.md\n", False),
        ("R  old.py -> service/moved.py\n", True),
    ],
)
def test_has_uncommitted_changes(porcelain: str, expected: bool) -> None:
    assert has_uncommitted_changes(porcelain) is expected


def test_markdown_states_revisions_rounds_and_ratios() -> None:
    rounds = [_round((2.0, 4.0, 400.0), (4.0, 8.0, 200.0)), _round((2.0, 4.0, 400.0), (4.0, 8.0, 200.0))]
    section = {
        "rev": "HEAD~1",
        "baseline_commit": "f6b90fa",
        "current_commit": "3581cce",
        "current_uncommitted": True,
        "rounds_n": 2,
        "settings": {"c1_requests": 200, "c16_duration_s": 3.0, "api_torch_threads": "1"},
        "load_avg_start": [1.0, 1.0, 1.0],
        "load_avg_end": [2.0, 1.0, 1.0],
        "rounds": rounds,
        **summarize(rounds),
    }
    text = "\n".join(markdown(section, {"cpus": 2, "platform": "Linux"}))
    assert "## /predict against a baseline checkout" in text
    assert "`3581cce` + uncommitted changes" in text and "`f6b90fa` (`--baseline HEAD~1`)" in text
    assert "2 rounds" in text and "2 CPUs" in text
    assert "| current 3581cce | 2.0 | 4.0 | 400.0 |" in text
    assert "**0.5** (0.5 - 0.5)" in text and "**2.0** (2.0 - 2.0)" in text


def test_new_question_workload_times_fresh_texts_and_reports_them() -> None:
    rounds = [_round((20.0, 40.0, 40.0), (10.0, 20.0, 80.0)) for _ in range(3)]
    for i, r in enumerate(rounds):
        r["current"]["cold_ms"], r["baseline"]["cold_ms"] = 3000.0 + i, 2000.0
    s = summarize(rounds)
    assert s["median"]["current"]["cold_ms"] == 3001.0 and s["ratio"]["cold_ms"] == 1.5
    assert s["round_ratio_min_max"]["cold_ms"] == [1.5, 1.501]
    section = {
        "rev": "abc",
        "baseline_commit": "abc",
        "current_commit": "def",
        "current_uncommitted": False,
        "rounds_n": 3,
        "workload": "new32",
        "settings": {"c1_requests": 200, "c16_duration_s": 3.0, "api_torch_threads": "1"},
        "load_avg_start": [1.0],
        "load_avg_end": [1.0],
        **s,
    }
    text = "\n".join(markdown(section, {"cpus": 2, "platform": "Linux"}))
    assert "| server | p50 ms (c1) | p99 ms (c1) | req/s (c16) | new texts ms |" in text
    assert "| current def | 20.0 | 40.0 | 40.0 | 3001.0 |" in text and "**1.5** (1.5 - 1.501)" in text
    assert "32 questions outside the prior bank" in text
    # a round without the figure leaves it out of the summary (older results files)
    del rounds[0]["current"]["cold_ms"]
    assert "cold_ms" not in summarize(rounds)["ratio"]


def test_the_new_question_targets_are_outside_the_shipped_prior_bank() -> None:
    from benchmarks.run import ROOT, fresh_body, new_question_targets
    from service.gpo.checkpoint import load_checkpoint
    from service.gpo.prior import question_key

    targets = new_question_targets(32)
    assert len(targets) == 32 and len({t["question"] for t in targets}) == 32
    bank = load_checkpoint(ROOT / "model_store" / "opinionqa-gpo").bank
    assert bank is not None
    assert not any(
        bank.lookup(question_key(t["question"], t["options"]), len(t["options"])) is not None for t in targets
    )
    a, b = fresh_body("g", targets, "x1"), fresh_body("g", targets, "x2")
    assert a["group_id"] == "g" and [q["options"] for q in a["questions"]] == [t["options"] for t in targets]
    assert {q["question"] for q in a["questions"]}.isdisjoint(q["question"] for q in b["questions"])
