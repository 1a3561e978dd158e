"""The pure helpers of the scale benchmark (benchmarks/scale.py): the log-log and per-item fits, the bulk rows copied
from template items, the size plan, the Markdown table and section, the metrics ratios and the report (no server,
no database)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from benchmarks.scale import (
    ITEM_COLUMNS,
    SECTION_BEGIN,
    SECTION_END,
    TemplateRow,
    acceptance,
    bulk_item_rows,
    choose_items_per_group,
    fit_loglog,
    markdown,
    md_table,
    parse_metrics,
    per_item_cost,
    replace_section,
    state_lookups,
    summarize,
    target_window,
)


def test_fit_loglog_recovers_the_exponent() -> None:
    xs = [10, 30, 100, 300, 1000]
    f = fit_loglog(xs, [3.0 * x**1.5 for x in xs])
    assert f["slope"] == pytest.approx(1.5)
    assert math.exp(f["intercept"]) == pytest.approx(3.0)
    assert f["r2"] == pytest.approx(1.0)
    assert f["n"] == 5
    flat = fit_loglog(xs, [7.0] * 5)
    assert flat["slope"] == pytest.approx(0.0, abs=1e-12)


def test_fit_loglog_with_noise_and_degenerate_inputs() -> None:
    rng = np.random.default_rng(0)
    xs = np.array([1, 4, 16, 64, 256], dtype=float)
    ys = 2.0 * xs**0.5 * np.exp(rng.normal(0, 0.01, xs.size))
    f = fit_loglog(xs, ys)
    assert f["slope"] == pytest.approx(0.5, abs=0.02)
    assert 0.99 < f["r2"] <= 1.0
    assert math.isnan(fit_loglog([5], [1.0])["slope"])
    assert math.isnan(fit_loglog([5, 5], [1.0, 2.0])["slope"])
    assert math.isnan(fit_loglog([0, 5], [1.0, 2.0])["slope"])  # log(0): no fit rather than a wrong one


def test_per_item_cost() -> None:
    sizes = [10, 30, 100, 300, 1000]
    c = per_item_cost(sizes, [5.0 + 0.25 * s for s in sizes])
    assert c["ms_per_item_fit"] == pytest.approx(0.25)
    assert c["intercept_ms"] == pytest.approx(5.0)
    assert c["ms_per_item_diff"] == pytest.approx(0.25)
    assert c["marginal_ms_per_item"] == pytest.approx([0.25] * 4)
    quad = per_item_cost([300, 10, 100], [300.0**2, 10.0**2, 100.0**2])  # any order: segments by size
    assert quad["marginal_ms_per_item"] == pytest.approx([110.0, 400.0])


def _templates() -> list[TemplateRow]:
    out = []
    for i in range(6):
        k = 2 + i % 3
        emb = np.arange(k * 4, dtype="<f4").tobytes() + bytes([i])
        out.append(TemplateRow(f"q{i}?", tuple(f"o{j}" for j in range(k)), (1.0,) * k, "choice", "emb-key", emb))
    return out


def test_bulk_rows_copy_the_template_items() -> None:
    templates = _templates()
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = list(bulk_item_rows(templates, [11, 12, 13], [3, 6, 1], np.random.default_rng(1), now))
    assert len(rows) == 10
    assert all(len(r) == len(ITEM_COLUMNS.split(", ")) for r in rows)
    by_question = {t.question: t for t in templates}
    for _gid, _pos, kind, question, options, dist, ordinals, payload, key, emb, created in rows:
        t = by_question[question]
        assert emb is t.embeddings  # the very bytes of the template row, not a re-encoding
        assert (kind, key, tuple(options), tuple(ordinals), payload, created) == (
            t.kind,
            t.embedder_key,
            t.options,
            t.ordinals,
            None,
            now,
        )
        assert len(dist) == len(options) and sum(dist) == pytest.approx(1.0) and min(dist) >= 0
    for gid, n in ((11, 3), (12, 6), (13, 1)):
        mine = [r for r in rows if r[0] == gid]
        assert [r[1] for r in mine] == list(range(n))
        assert len({r[3] for r in mine}) == n  # distinct questions while the pool lasts
    # more items than templates: questions repeat, every item still a template's copy
    big = list(bulk_item_rows(templates, [1], [20], np.random.default_rng(2), now))
    assert len(big) == 20 and {r[3] for r in big} <= set(by_question)
    # random distributions: two groups of the same questions do not get the same answers
    a = list(bulk_item_rows(templates, [1], [6], np.random.default_rng(3), now))
    assert len({tuple(r[5]) for r in a}) == 6


def test_choose_items_per_group_reduces_loudly_only_when_needed() -> None:
    assert choose_items_per_group(1000, 9000.0, 25e9) == (20, 200, None)
    lo, hi, why = choose_items_per_group(100_000, 9000.0, 25e9)
    assert (lo, hi) == (20, 20)
    assert why is not None and "99.0 GB" in why and "20 items" in why


def test_md_table() -> None:
    text = md_table(["a", "b|c", "d"], [[1234567, 0.12345, None], ["x|y", 12.345, float("nan")], [3, 2500.4, True]])
    lines = text.splitlines()
    assert lines[0] == "| a | b|c | d |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| 1,234,567 | 0.123 | - |"
    assert lines[3] == "| x\\|y | 12.3 | n/a |"
    assert lines[4] == "| 3 | 2,500 | True |"


def test_replace_section_appends_then_replaces_in_place() -> None:
    base = "# Benchmarks\n\nsome text\n"
    once = replace_section(base, "## Scale\n\nv1")
    assert once.startswith(base.rstrip("\n"))
    assert f"{SECTION_BEGIN}\n## Scale\n\nv1\n{SECTION_END}\n" in once
    later = once + "\n## Another section\n"
    twice = replace_section(later, "## Scale\n\nv2\n")
    assert "v1" not in twice and "v2" in twice
    assert twice.count(SECTION_BEGIN) == 1 and twice.endswith("## Another section\n")
    assert replace_section(twice, "## Scale\n\nv2") == twice
    with pytest.raises(ValueError):
        replace_section(f"x\n{SECTION_BEGIN}\nno end", "s")


METRICS_BEFORE = """# TYPE gpo_context_state_lookups counter
gpo_context_state_lookups_total{result="local"} 10.0
gpo_context_state_lookups_total{result="miss"} 5.0
"""
METRICS_AFTER = """# TYPE gpo_context_state_lookups counter
gpo_context_state_lookups_total{result="local"} 40.0
gpo_context_state_lookups_total{result="shared"} 15.0
gpo_context_state_lookups_total{result="miss"} 10.0
"""


def test_state_lookups_from_metrics_deltas() -> None:
    got = state_lookups(parse_metrics(METRICS_BEFORE), parse_metrics(METRICS_AFTER))
    assert (got["lookups"], got["local"], got["shared"], got["miss"]) == (50, 30, 15, 5)
    assert got["local_hit_ratio"] == pytest.approx(0.6)
    assert got["shared_hit_ratio_of_local_misses"] == pytest.approx(0.75)
    assert got["hit_ratio_any"] == pytest.approx(0.9)
    assert state_lookups({}, {}, shared=False)["shared_hit_ratio_of_local_misses"] is None


def test_target_window_wraps_around_the_pool() -> None:
    pool = [{"question": str(i)} for i in range(10)]
    assert [q["question"] for q in target_window(pool, 0, 4)] == ["0", "1", "2", "3"]
    assert [q["question"] for q in target_window(pool, 2, 4)] == ["8", "9", "0", "1"]
    assert len(target_window(pool, 3, 25)) == 10


def _level(groups: int, warm: float, cold: float) -> dict:
    lat = summarize([warm / 1000] * 9, {200: 9}, 1.0)
    c = summarize([cold / 1000] * 9, {200: 9}, 1.0)
    reg = {**summarize([0.05] * 9, {200: 9}, 1.0), "registrations_per_s": 9.0, "items_per_s": 180.0}
    return {
        "level": groups,
        "stored_groups": groups,
        "load": {
            "groups_loaded": groups,
            "items_loaded": 20 * groups,
            "load_s": 1.0,
            "analyze_s": 0.1,
            "items_per_s": 20.0 * groups,
            "groups_per_s": float(groups),
        },
        "db": {
            "database_bytes": groups * 10**5,
            "context_items_bytes": groups * 9 * 10**4,
            "context_items": 20 * groups,
        },
        "warm": lat,
        "cold": c,
        "registration": reg,
    }


def test_acceptance_and_report_from_synthetic_results() -> None:
    sizes = [10, 100, 1000]
    points = [
        {
            "items": s,
            "tokens": 3 * s,
            "register_s": 0.1,
            "cold": summarize([(5 + 0.5 * s) / 1000], {200: 1}, 1.0),
            "warm": summarize([0.008], {200: 1}, 1.0),
            "encode_ms_mean": 0.3 * s,
        }
        for s in sizes
    ]
    from benchmarks.scale import finish_curve

    r = {
        "machine": {
            "cpus": 2,
            "platform": "Linux",
            "processor": "x86_64",
            "python": "3.11",
            "torch": "2.x",
            "loadavg_at_start": [1.0, 1.0, 1.0],
        },
        "date": "2026-01-01 00:00 UTC",
        "command": "python -m benchmarks.scale",
        "settings": {
            "api_threads": 1,
            "clients": 4,
            "probes": 50,
            "warm_requests": 600,
            "register_s": 20,
            "clones": 10,
            "curve_requests": 100,
            "hit_requests": 1500,
        },
        "levels": [_level(1000, 10.0, 40.0), _level(10_000, 11.0, 42.0), _level(100_000, 12.5, 60.0)],
        "context_curve": finish_curve(points, "items"),
        "notes": ["SCALE REDUCED: 20 items per group"],
        "cuts": [],
    }
    acc = acceptance(r)
    assert acc["warm_p50_ratio"] == pytest.approx(1.25)
    assert acc["warm_flat_within_2x"] is True
    assert acc["cold_ms_per_item_fit"] == pytest.approx(0.5)
    r["acceptance"] = acc
    md = markdown(r, img_prefix="benchmarks/", heading="##")
    assert md.startswith("## Scale (issue 18)")
    assert "flat within 2x: met" in md
    assert "0.500 ms/item" in md
    assert "**SCALE REDUCED: 20 items per group**" in md
    assert "![/predict vs stored groups](benchmarks/scale_groups.png)" in md
    assert "| 100,000 | 2,000,000 |" in md
    r["levels"][-1]["warm"]["p50_ms"] = 25.0
    assert acceptance(r)["warm_flat_within_2x"] is False


def test_findings_name_the_offset_walk_only_when_deep_pages_are_slow() -> None:
    from benchmarks.scale import findings

    def level(last_ms: float) -> dict:
        return {
            "stored_groups": 100_000,
            "list_groups": {
                "first": {"offset": 0, "p50_ms": 8.0},
                "middle": {"offset": 50_000, "p50_ms": last_ms / 2},
                "last": {"offset": 99_900, "p50_ms": last_ms},
                "explain_last_page": {"with_count_ms": 700.0, "without_count_ms": 11.0, "count_subquery_runs": 100_000},
            },
        }

    slow = findings({"levels": [level(800.0)]})
    assert len(slow) == 1 and "100x" in slow[0] and "100,000 times" in slow[0]
    assert findings({"levels": [level(9.0)]}) == []
