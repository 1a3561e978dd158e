"""The results pages say what the data is: the description computed from the dataset, the shipped data's
description for records saved without one (the checked-in pages regenerate unchanged), and other data sets'
own names, counts, scales and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.cli.groups import report_cmd
from service.training.data_description import (
    describe_groups,
    describe_ratings,
    shipped_group_description,
    shipped_ratings_description,
)
from service.training.datasets import PreferenceDataset, Question
from service.training.globalopinionqa import load_globalopinionqa, shipped_globalopinionqa_path
from service.training.individuals_report import END, START, individuals_markdown, section_of
from service.training.ratings import RatedItem, RatingsDataset
from service.training.report import metric_phrase, results_markdown, write_report

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_descriptions_are_what_the_page_says() -> None:
    groups = shipped_group_description()
    assert (groups["name"], groups["groups"], groups["questions"], groups["scorable"]) == ("OpinionQA", 17, 684, 680)
    assert (groups["ordinal"], groups["non_ordinal"], groups["ragged"], groups["shipped"]) == (680, 0, False, True)
    ratings = shipped_ratings_description()
    assert (ratings["name"], ratings["people"], ratings["items"], ratings["per_person"]) == (
        "NYT books",
        335,
        235,
        [25, 52],
    )
    assert (ratings["scale"], ratings["levels"], ratings["item_noun"]) == ([1.0, 4.0], 4, "book")
    assert ratings["prompt"] == "How likely would you be to read this book?"


def test_the_shipped_globalopinionqa_is_non_ordinal_and_ragged() -> None:
    d = describe_groups(load_globalopinionqa(), shipped_globalopinionqa_path())
    assert d["name"] == "GlobalOpinionQA" and d["ragged"] and d["ordinal"] == 0
    assert d["non_ordinal"] == d["scorable"] > 0
    assert d["answers"] < d["groups"] * d["questions"]
    assert "Jensen–Shannon" in metric_phrase(d) and "Wasserstein" not in metric_phrase(d)


def test_gpo_report_rebuilds_the_checked_in_group_section_unchanged(tmp_path: Path) -> None:
    """results/eval.meta.json predates descriptions: the page falls back to the shipped OpinionQA's, computed."""
    out = tmp_path / "RESULTS.md"
    report_cmd(ROOT / "results" / "eval.json", out)
    page = (ROOT / "RESULTS.md").read_text()
    assert out.read_text() == page.split(START)[0].rstrip("\n") + "\n"
    assert "17 OpinionQA groups, 680 scorable questions, 20 context questions" in out.read_text()


def test_the_checked_in_individuals_section_is_rebuilt_from_its_records() -> None:
    """results/individuals.json predates descriptions: the shipped NYT books' description is computed instead.
    One bullet of RESULTS.md predates 7938b5c (its wording changed in code, the page was not regenerated)."""
    saved = json.loads((ROOT / "results" / "individuals.json").read_text())
    assert "data" not in saved["meta"]
    section = individuals_markdown(saved["records"], saved["meta"], "results/individuals_context.png")
    checked_in = section_of((ROOT / "RESULTS.md").read_text())
    assert checked_in is not None
    stale = "- For comparisons,"
    assert [x for x in section.splitlines() if not x.startswith(stale)] == [
        x for x in checked_in.splitlines() if not x.startswith(stale)
    ]
    assert "335 people rated 25–52 of 235 books on a 1–4 scale (“how likely would you read it”" in section


def my_survey(tmp_path: Path) -> tuple[PreferenceDataset, Path]:
    """5 groups, 12 non-ordinal questions; each group skips a different question (ragged)."""
    questions = [Question(f"q{i}", f"Question {i}?", ("yes", "no", "maybe")) for i in range(12)]
    groups = [f"g{j}" for j in range(5)]
    dists = {
        g: {q.qid: np.array([0.5, 0.3, 0.2]) for i, q in enumerate(questions) if i != j} for j, g in enumerate(groups)
    }
    return PreferenceDataset(questions, groups, dists), tmp_path / "MySurvey.jsonl"


def test_the_group_page_follows_the_data(tmp_path: Path) -> None:
    ds, path = my_survey(tmp_path)
    data = describe_groups(ds, path)
    assert (data["name"], data["groups"], data["scorable"], data["answers"], data["ragged"]) == (
        "MySurvey",
        5,
        12,
        55,
        True,
    )
    records = [
        {
            "method": m,
            "protocol": "groups",
            "subset": s,
            "split": split,
            "seed": 0,
            "n_context": 4,
            "alignment": a,
            "train_wall_s": 30.0,
        }
        for m, a in (("gpo", 0.9), ("uniform", 0.8))
        for s in ("all", "contentious")
        for split in (0.4, 0.6)
    ]
    meta = {"command": "gpo eval --data MySurvey.jsonl", "date": "today", "data": data, "n_context": 4}
    page = results_markdown(records, [], meta, {})
    flat = " ".join(page.split())
    assert "Alignment = 1 - Jensen–Shannon distance (natural log; every question is non-ordinal)" in flat
    assert "5 MySurvey groups, 12 scorable questions (ragged: 55 of the 5 × 12 (group, question) answers" in flat
    assert "4 context questions (drawn for each test group from the questions it answered)" in flat
    assert "| gpo | 0.9000 ± 0.0000 | 0.9000 ± 0.0000 |" in page  # the tables at the run's context size
    assert "**0.9000** (no target for MySurvey)" in page
    for absent in ("OpinionQA", "17", "680", "Wasserstein", "0.970"):
        assert absent not in page, absent


def test_another_data_sets_results_are_a_section_of_the_page(tmp_path: Path) -> None:
    """`gpo eval --data X --report RESULTS.md` fills X's own section (figures prefixed), keeps the OpinionQA page
    and the individuals section, and replaces only its section when re-run; the OpinionQA page rebuilt keeps it."""
    ds, path = my_survey(tmp_path)
    records = [
        {"method": m, "protocol": "groups", "subset": "all", "split": 0.6, "seed": 0, "n_context": 4,
         "alignment": a, "train_wall_s": 1.0}
        for m, a in (("gpo", 0.9), ("uniform", 0.8))
    ]  # fmt: skip
    meta = {"command": "gpo eval --data MySurvey.jsonl", "date": "today", "data": describe_groups(ds, path)}
    out = tmp_path / "RESULTS.md"
    report_cmd(ROOT / "results" / "eval.json", out)  # the shipped OpinionQA page
    opinionqa_page = out.read_text()
    out.write_text(opinionqa_page + "\n" + START + "\nthe individuals section\n" + END + "\n")
    write_report(records, [], {**meta, "n_context": 4}, out)
    page = out.read_text()
    assert page.startswith(opinionqa_page.rstrip("\n")) and "the individuals section" in page
    assert page.count("<!-- section:mysurvey -->") == 1 and "## MySurvey (`gpo eval --data`)" in page
    assert "results/mysurvey_alignment_bars.png" in page and (tmp_path / "results/mysurvey_alignment_bars.png").exists()
    assert "The paper's figures" not in page  # none for a data set the paper did not use
    write_report([{**r, "alignment": 0.5} for r in records], [], {**meta, "n_context": 4}, out)
    again = out.read_text()
    assert again.count("<!-- section:mysurvey -->") == 1 and "0.9000" not in again.split("section:mysurvey")[1]
    out.write_text(again + "\n## A note written by hand\n\nkept across re-runs\n")
    report_cmd(ROOT / "results" / "eval.json", out)  # rebuilding the OpinionQA page keeps both sections and the note
    rebuilt = out.read_text()
    assert "<!-- section:mysurvey -->" in rebuilt and "the individuals section" in rebuilt
    assert rebuilt.count("kept across re-runs") == 1 and rebuilt.startswith(opinionqa_page.rstrip("\n"))


def test_the_shipped_globalopinionqa_section_names_the_papers_figures(tmp_path: Path) -> None:
    data = describe_groups(load_globalopinionqa(), shipped_globalopinionqa_path())
    records = [{"method": "gpo", "protocol": "groups", "subset": "all", "split": 0.6, "seed": 0, "n_context": 20,
                "alignment": 0.8, "train_wall_s": 1.0}]  # fmt: skip
    out = tmp_path / "RESULTS.md"
    write_report(records, [], {"data": data, "n_context": 20}, out)
    assert "GPO 0.80–0.82" in out.read_text() and "<!-- section:globalopinionqa -->" in out.read_text()


def test_a_mixed_data_set_names_both_metrics() -> None:
    phrase = metric_phrase({"ordinal": 3, "non_ordinal": 9})
    assert "Wasserstein distance on the 3 ordinal questions" in phrase
    assert "Jensen–Shannon distance (natural log) on the 9 non-ordinal ones" in phrase


def trail_ratings(tmp_path: Path) -> tuple[RatingsDataset, Path]:
    """7 people rate 3 to 6 of 6 trails on a 1–5 scale."""
    items = [RatedItem(f"t{i}", f"Trail {i}") for i in range(6)]
    people = [f"p{j}" for j in range(7)]
    scores = {p: {f"t{i}": float(1 + (i + j) % 5) for i in range(3 + j % 4)} for j, p in enumerate(people)}
    ds = RatingsDataset(items, people, scores, (1.0, 5.0), prompt="Would you walk this trail?")
    return ds, tmp_path / "trails.jsonl.gz"


def test_the_individuals_section_follows_the_data(tmp_path: Path) -> None:
    ds, path = trail_ratings(tmp_path)
    data = describe_ratings(ds, path)
    assert (data["name"], data["people"], data["items"], data["per_person"]) == ("trails", 7, 6, [3, 6])
    assert (data["scale"], data["levels"], data["wording"], data["shipped"]) == ([1.0, 5.0], 5, data["prompt"], False)
    people = [f"p{j}" for j in range(7)]
    pairwise = {"gpo": 0.62, "content_factor": 0.61, "reward_model": 0.6, "global_mean": 0.58}
    records = [
        {
            "method": m,
            "seed": seed,
            "n_context": k,
            "pairwise": v,
            "spearman": 0.2,
            "rmse": 1.0,
            "exact": 0.3,
            "per_person_pairwise": dict.fromkeys(people, v),
        }
        for seed in (0, 1)
        for k in (1, 2)
        for m, v in pairwise.items()
    ]
    meta = {"main_context": 2, "train_frac": 0.6, "command": "gpo eval-individuals", "wall_s": 60.0, "data": data}
    section = individuals_markdown(records, meta, None)
    assert section.startswith(START) and section.endswith(END + "\n")
    assert "## Individuals: trails (a person is a group of one)" in section
    assert "7 people rated 3–6 of 6 items on a 1–5 scale (“Would you walk this trail?”; `trails.jsonl.gz`)" in section
    assert "RMSE on the 1–5 scale" in section and "read as a 5-way choice" in section
    assert "k random items they rated" in section
    for absent in ("NYT", "1–4", "335", "235", "book", "4-way", "0.87"):
        assert absent not in section, absent


def test_a_ratings_file_without_a_prompt_says_so(tmp_path: Path) -> None:
    ds, path = trail_ratings(tmp_path)
    ds.prompt = ""
    data = describe_ratings(ds, path)
    assert data["wording"] == ""
    meta = {"main_context": 1, "train_frac": 0.6, "command": "gpo", "wall_s": 60.0, "data": data}
    records = [
        {"method": m, "seed": 0, "n_context": 1, "pairwise": 0.6, "spearman": 0.1, "rmse": 1.0, "exact": 0.2}
        | {"per_person_pairwise": {"p0": 0.6}}
        for m in ("gpo", "reward_model")
    ]
    assert "(no question wording in the data; `trails.jsonl.gz`)" in individuals_markdown(records, meta, None)


def test_an_interrupted_evaluation_says_so(tmp_path: Path) -> None:
    ds, path = my_survey(tmp_path)
    records = [{"method": "gpo", "protocol": "groups", "subset": "all", "split": 0.6, "seed": 0, "n_context": 4,
                "alignment": 0.9, "train_wall_s": 1.0}]  # fmt: skip
    meta = {"data": describe_groups(ds, path), "n_context": 4}
    assert "**Incomplete:**" in results_markdown(records, [], {**meta, "complete": False}, {})
    assert "Incomplete" not in results_markdown(records, [], {**meta, "complete": True}, {})
    assert "Incomplete" not in results_markdown(records, [], meta, {})  # records saved before the flag existed
