"""GlobalOpinionQA: the importer on tiny hand-made files in both layouts, the CLI, and the shipped file."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.training.datasets import PreferenceDataset
from service.training.globalopinionqa import (
    ATTRIBUTE,
    BENCH_FILE,
    PLURALISM_FILE,
    import_globalopinionqa,
    import_globalopinionqa_to,
    import_globalopinionqa_with_notes,
    is_non_substantive,
    load_globalopinionqa,
    prompt_question,
    question_id,
    shipped_globalopinionqa_path,
    summary_lines,
)
from service.training.jsonl import read_jsonl
from service.training.metrics import js_alignment, question_alignment

SHARED_GOQA = Path(__file__).resolve().parents[3] / "shared" / "data" / "globalopinionqa"
INDIA = "India (Current national sample)"

# ------------------------------------------------------------------------------------ tiny sources

Q1 = "Is X good?"  # both files; France agrees, Germany disagrees, Japan sums to 0
Q1_OPTIONS = ["Yes", "No", "DK/Refused"]
Q2 = "On a scale, how much?"  # numbers as options (JSON numbers in the first layout)
Q3 = "Only one real answer?"  # one substantive option left: dropped
Q4 = "A or B?"  # Japan answered only "Missing; Unknown"
Q5 = "Which colour?"  # second file only; a volunteered answer is substantive


def prompt(text: str, options: list[str], pad: str = "") -> str:
    listed = " ".join(f"{'ABCDEFGHIJ'[i]}. {o}" for i, o in enumerate(options))
    return f"Question: {text}{pad}\nOptions: {listed}\nAnswer:"


BENCH = [
    {"country": "France", "question": Q1, "options": Q1_OPTIONS, "distribution": [0.5, 0.3, 0.2]},
    {"country": "Germany", "question": Q1, "options": Q1_OPTIONS, "distribution": [0.6, 0.4, 0.0]},
    {"country": "Japan", "question": Q1, "options": Q1_OPTIONS, "distribution": [0.0, 0.0, 0.0]},
    {
        "country": "France",
        "question": Q2 + " ",
        "options": ["Not at all", 1.0, 2.0, "Very", "No answer"],
        "distribution": [0.1, 0.2, 0.3, 0.3, 0.1],
    },
    {
        "country": "Germany",
        "question": Q3,
        "options": ["Yes", "Don't know", "Refused"],
        "distribution": [0.5, 0.3, 0.2],
    },
    {"country": "Germany", "question": Q4, "options": ["A", "B", "Missing; Unknown"], "distribution": [0.2, 0.2, 0.6]},
    {"country": "Japan", "question": Q4, "options": ["A", "B", "Missing; Unknown"], "distribution": [0.0, 0.0, 1.0]},
]
PLURALISM = [
    {
        "question": prompt(Q1, Q1_OPTIONS),
        "options": Q1_OPTIONS,
        "attribute": "France",
        "gold_distribution": [0.5, 0.3, 0.2],
        "pred_distribution": None,
        "id": 1,
    },
    {
        "question": prompt(Q1, Q1_OPTIONS),
        "options": Q1_OPTIONS,
        "attribute": "Germany",
        "gold_distribution": [0.5, 0.5, 0.0],
        "pred_distribution": None,
        "id": 2,
    },
    {
        "question": prompt(Q1, Q1_OPTIONS, pad="  "),
        "options": Q1_OPTIONS,
        "attribute": INDIA,
        "gold_distribution": [0.2, 0.6, 0.2],
        "pred_distribution": None,
        "id": 3,
    },
    {
        "question": prompt(Q5, ["Red", "Blue", "Neither (VOL)"]),
        "options": ["Red", "Blue", "Neither (VOL)"],
        "attribute": "Japan",
        "gold_distribution": [0.2, 0.2, 0.6],
        "pred_distribution": None,
        "id": 4,
    },
]
QID = {
    "q1": question_id(Q1, tuple(Q1_OPTIONS)),
    "q2": question_id(Q2, ("Not at all", "1.0", "2.0", "Very", "No answer")),
    "q3": question_id(Q3, ("Yes", "Don't know", "Refused")),
    "q4": question_id(Q4, ("A", "B", "Missing; Unknown")),
    "q5": question_id(Q5, ("Red", "Blue", "Neither (VOL)")),
}


@pytest.fixture()
def sources(tmp_path: Path) -> Path:
    (tmp_path / BENCH_FILE).write_text(json.dumps(BENCH), encoding="utf-8")
    (tmp_path / PLURALISM_FILE).write_text(json.dumps(PLURALISM), encoding="utf-8")
    return tmp_path


def test_merge_drops_and_renormalises(sources: Path) -> None:
    ds = import_globalopinionqa(sources)
    assert ds.groups == ["France", "Germany", INDIA, "Japan"]
    assert ds.group_attributes == dict.fromkeys(ds.groups, ATTRIBUTE)
    # group-major first appearance: France (q1, q2), Germany (q1, q4), Japan (q5); q3 has one option left
    assert [q.qid for q in ds.questions] == [QID["q1"], QID["q2"], QID["q4"], QID["q5"]]
    q1, q2, q4, q5 = ds.questions
    assert q1.options == ("Yes", "No") and q1.text == Q1
    assert q2.options == ("Not at all", "1.0", "2.0", "Very") and q2.text == Q2  # numbers stay strings
    assert q4.options == ("A", "B")
    assert q5.options == ("Red", "Blue", "Neither (VOL)")
    assert all(q.ordinals is None and not q.is_ordinal for q in ds.questions)

    expected = {
        "France": {QID["q1"]: [0.625, 0.375], QID["q2"]: [1 / 9, 2 / 9, 3 / 9, 3 / 9]},
        "Germany": {QID["q1"]: [0.6, 0.4], QID["q4"]: [0.5, 0.5]},  # the first file's copy is kept
        INDIA: {QID["q1"]: [0.25, 0.75]},  # second file only, padded prompt text: same question
        "Japan": {QID["q5"]: [0.2, 0.2, 0.6]},  # q1 sums to 0, q4 only "Missing": both rows dropped
    }
    assert {g: list(d) for g, d in ds.dists.items()} == {g: list(d) for g, d in expected.items()}
    for g, d in expected.items():
        for qid, v in d.items():
            np.testing.assert_allclose(ds.dist(g, qid), v, rtol=0, atol=1e-15)
    assert len(ds.complete_questions()) == 0  # ragged


def test_import_notes_count_everything(sources: Path) -> None:
    _, notes = import_globalopinionqa_with_notes(sources)
    assert notes.rows_per_file == (7, 4)
    assert notes.rows_in_both == 2
    assert [(c, q) for c, q, _ in notes.disagreements] == [("Germany", QID["q1"])]
    assert notes.disagreements[0][2] == pytest.approx(0.1)
    assert (notes.merged_rows, notes.merged_questions) == (9, 5)
    assert notes.few_options_questions == 1 and notes.few_options_rows == 1
    assert notes.zero_sum_rows == 1 and notes.zero_substantive_rows == 1
    assert notes.unanswered_questions == 0
    assert set(notes.dropped_options) == {
        ("DK/Refused", 1, 4),
        ("Missing; Unknown", 1, 2),
        ("No answer", 1, 1),
        ("Don't know", 1, 1),
        ("Refused", 1, 1),
    }
    assert notes.dropped_options[0] == ("DK/Refused", 1, 4)  # most rows first
    text = "\n".join(notes.lines())
    assert "2 (question, country) rows in both files, 1 disagree" in text
    assert "1 questions with < 2 substantive options (1 rows), 1 rows summing to 0, 1 rows with only" in text


def test_summary_lines(sources: Path) -> None:
    lines = summary_lines(import_globalopinionqa(sources), min_questions=2)
    assert lines[0] == "4 groups, 4 questions, 6 rows"
    assert lines[1] == "questions per group: min 1, median 1.5, max 2"
    assert lines[2] == "groups per question: min 1, median 1, max 3"
    assert lines[3] == "groups with >= 2 questions: 2"
    assert lines[4] == "most questions shared by two groups: 1 ('France' and 'Germany')"
    assert lines[5] == "options per question: 2: 2, 3: 1, 4: 1"


def test_jsonl_round_trip(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "goqa.jsonl.gz"
    ds, _ = import_globalopinionqa_to(sources, out)
    back = read_jsonl(out)
    assert_same(ds, back)
    first = json.loads(gzip.decompress(out.read_bytes()).decode().splitlines()[0])
    assert "ordinals" not in first and first["attribute"] == ATTRIBUTE and first["group"] == "France"
    # a non-ordinal question is scored with 1 - JS distance
    q = back.question(QID["q1"])
    score = question_alignment(q, [0.5, 0.5], back.dist("France", QID["q1"]))
    assert score == pytest.approx(js_alignment([0.5, 0.5], [0.625, 0.375]), abs=1e-12)


@pytest.mark.parametrize(
    ("option", "dropped"),
    [
        ("DK/Refused", True),
        ("Don't know", True),
        ("Don\u2019t  Know", True),
        ("Don't know/Refused", True),
        ("No answer", True),
        ("No Answer/refused", True),
        ("Refused", True),
        ("Missing", True),
        ("Missing; Not available", True),
        ("Other missing; Multiple answers Mail (EVS)", True),
        ("Don't -9:-2", True),
        ("Neither (VOL)", False),
        ("Depends (VOL)", False),
        ("Never heard of (VOL)", False),
        ("Can't rate (VOL)", False),
        ("Don't mind", False),
        ("Don't believe that", False),
        ("Not mentioned", False),
        ("I do not know examples concerned", False),
        ("None at all", False),
        ("Nothing missing here", False),
        ("1.0", False),
        ("Dkx", False),
    ],
)
def test_non_substantive_rule(option: str, dropped: bool) -> None:
    assert is_non_substantive(option) is dropped


def test_prompt_must_list_the_options() -> None:
    assert prompt_question(prompt("Why?", ["A", "B "]), ("A", "B")) == "Why?"
    with pytest.raises(ValueError, match="not the options"):
        prompt_question(prompt("Why?", ["A", "B"]), ("A", "C"))
    with pytest.raises(ValueError, match="prompt"):
        prompt_question("Why?", ("A", "B"))


def test_bad_rows_are_refused(tmp_path: Path) -> None:
    (tmp_path / PLURALISM_FILE).write_text("[]", encoding="utf-8")
    bad = [dict(BENCH[0], distribution=[0.5, float("nan"), 0.5])]
    (tmp_path / BENCH_FILE).write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ValueError, match="negative or non-finite"):
        import_globalopinionqa(tmp_path)
    (tmp_path / BENCH_FILE).write_text(json.dumps([BENCH[0], BENCH[0]]), encoding="utf-8")
    with pytest.raises(ValueError, match="two rows for country 'France'"):
        import_globalopinionqa(tmp_path)
    (tmp_path / BENCH_FILE).write_text(json.dumps([{"country": "France"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="not a"):
        import_globalopinionqa(tmp_path)
    (tmp_path / BENCH_FILE).write_text(json.dumps([dict(BENCH[0], country="")]), encoding="utf-8")
    with pytest.raises(ValueError, match="country must be a non-empty string"):
        import_globalopinionqa(tmp_path)
    (tmp_path / BENCH_FILE).write_text(json.dumps([dict(BENCH[0], options=["Yes", "Yes ", "No"])]), encoding="utf-8")
    with pytest.raises(ValueError, match="repeated options"):
        import_globalopinionqa(tmp_path)
    (tmp_path / BENCH_FILE).write_text("[]", encoding="utf-8")
    (tmp_path / PLURALISM_FILE).write_text(json.dumps([dict(PLURALISM[0], options=["Yes", "No", "Other"])]))
    with pytest.raises(ValueError, match=f"{PLURALISM_FILE}, item 0: the prompt lists"):
        import_globalopinionqa(tmp_path)


def test_cli_dry_run_and_write(sources: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_app, ["import", "globalopinionqa", str(sources), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: nothing written" in result.output
    assert "4 groups, 4 questions, 6 rows" in result.output
    assert "most questions shared by two groups: 1" in result.output
    out = tmp_path / "out.jsonl"
    result = runner.invoke(cli_app, ["import", "globalopinionqa", str(sources), str(out)])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out).groups) == 4
    result = runner.invoke(cli_app, ["import", "globalopinionqa", str(sources)])
    assert result.exit_code != 0  # neither OUT nor --dry-run


# ------------------------------------------------------------------------------------ shipped file


def assert_same(a: PreferenceDataset, b: PreferenceDataset) -> None:
    assert a.groups == b.groups
    assert a.questions == b.questions
    assert a.group_attributes == b.group_attributes
    for g in a.groups:
        assert list(a.dists[g]) == list(b.dists[g])
        for q, v in a.dists[g].items():
            np.testing.assert_array_equal(v, b.dists[g][q])


@pytest.fixture(scope="module")
def goqa() -> PreferenceDataset:
    return load_globalopinionqa()


def test_shipped_counts(goqa: PreferenceDataset) -> None:
    """The counts PROVENANCE.md documents."""
    assert len(goqa.groups) == 130
    assert len(goqa.questions) == 1726
    per_group = {g: len(d) for g, d in goqa.dists.items()}
    assert sum(per_group.values()) == 9805
    assert sum(n >= 50 for n in per_group.values()) == 60
    assert (min(per_group.values()), max(per_group.values())) == (4, 264)
    assert per_group["France"] == 247 and per_group["Germany"] == 264 and per_group[INDIA] == 116
    assert not goqa.complete_questions()
    assert all(q.ordinals is None for q in goqa.questions)
    assert not any(is_non_substantive(o) for q in goqa.questions for o in q.options)
    assert all(q.n_options >= 2 for q in goqa.questions)
    assert set(goqa.group_attributes.values()) == {ATTRIBUTE}
    assert summary_lines(goqa)[3:5] == [
        "groups with >= 50 questions: 60",
        "most questions shared by two groups: 68 ('France' and 'Germany')",
    ]


def test_shipped_content_hash() -> None:
    content = gzip.decompress(shipped_globalopinionqa_path().read_bytes())
    assert hashlib.sha256(content).hexdigest() == "7bcacda01f614b5c69baf77af492726b2982c0d7dde23bcac4c62874f62846e1"


def test_reimport_gives_the_shipped_file(goqa: PreferenceDataset, tmp_path: Path) -> None:
    if not (SHARED_GOQA / BENCH_FILE).is_file():
        pytest.skip(f"raw GlobalOpinionQA copies not found at {SHARED_GOQA}")
    ds, notes = import_globalopinionqa_to(SHARED_GOQA, tmp_path / "goqa.jsonl.gz")
    assert_same(ds, goqa)
    assert gzip.decompress((tmp_path / "goqa.jsonl.gz").read_bytes()) == gzip.decompress(
        shipped_globalopinionqa_path().read_bytes()
    )
    assert (notes.rows_in_both, len(notes.disagreements), notes.zero_sum_rows) == (571, 0, 9)


def test_evaluation_scores_goqa_questions_with_js(sources: Path) -> None:
    """The evaluation's per-question score uses 1 - JS distance on these non-ordinal questions; NaN raises."""
    from service.training.evaluate import score

    ds = import_globalopinionqa(sources)
    qids = [QID["q1"], QID["q4"]]
    preds = {QID["q1"]: np.array([0.5, 0.5]), QID["q4"]: np.array([1.0, 0.0])}
    got = score(ds, "Germany", preds, qids)
    # q1: true (0.6, 0.4), m = (0.55, 0.45); q4: true (0.5, 0.5) against (1, 0): 1 - sqrt(0.75 ln(4/3))
    kl_pred = 0.5 * np.log(0.5 / 0.55) + 0.5 * np.log(0.5 / 0.45)
    kl_true = 0.6 * np.log(0.6 / 0.55) + 0.4 * np.log(0.4 / 0.45)
    js_q1 = (kl_pred + kl_true) / 2
    np.testing.assert_allclose(got, [1 - np.sqrt(js_q1), 1 - np.sqrt(0.75 * np.log(4 / 3))], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="NaN or inf"):
        score(ds, "Germany", {**preds, QID["q4"]: np.array([np.nan, np.nan])}, qids)
