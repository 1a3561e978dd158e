"""JSONL dataset format: round trips, validation errors naming file and line, atomic writes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from service.training.datasets import PreferenceDataset, Question
from service.training.jsonl import read_jsonl, write_jsonl
from service.training.records import DatasetError


def _dataset() -> PreferenceDataset:
    questions = [
        Question("q1", "How safe?", ("Very", "Somewhat", "Not"), (1.0, 2.0, 3.0), frozenset({"contentious"})),
        Question("q2", "Which world?", ("Safer", "More dangerous", "Neither"), (1.0, 2.0, 1.5)),
        Question("q3", "Favourite colour? \u00e9\u4e2d", ("red", "green")),  # non-ordinal, non-ASCII text
        Question("q4", "No order", ("a", "b"), (1.0, 1.0), frozenset({"x", "contentious"})),
    ]
    dists = {
        "A": {
            "q1": np.array([0.2, 0.3, 0.5]),
            "q2": np.array([1 / 3, 1 / 3, 1 / 3]),
            "q3": np.array([0.1, 0.9]),
            "q4": np.array([0.0, 1.0]),
        },
        "B": {"q1": np.array([0.7, 0.2, 0.1]), "q3": np.array([0.6, 0.4])},  # B skipped q2, q4
    }
    return PreferenceDataset(questions, ["A", "B"], dists, group_attributes={"A": "POLPARTY"})


def _assert_same(a: PreferenceDataset, b: PreferenceDataset) -> None:
    assert a.groups == b.groups
    assert a.questions == b.questions
    assert a.group_attributes == b.group_attributes
    assert {g: set(d) for g, d in a.dists.items()} == {g: set(d) for g, d in b.dists.items()}
    for g, d in a.dists.items():
        for q, v in d.items():
            np.testing.assert_array_equal(v, b.dists[g][q])  # bit-exact


@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz"])
def test_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    ds = _dataset()
    path = tmp_path / name
    write_jsonl(ds, path)
    _assert_same(read_jsonl(path), ds)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def test_gzip_is_deterministic_and_detected_by_content(tmp_path: Path) -> None:
    ds = _dataset()
    write_jsonl(ds, tmp_path / "a.jsonl.gz")
    write_jsonl(ds, tmp_path / "b.jsonl.gz")
    raw = (tmp_path / "a.jsonl.gz").read_bytes()
    assert raw == (tmp_path / "b.jsonl.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip header mtime
    write_jsonl(ds, tmp_path / "plain.jsonl")
    assert gzip.decompress(raw) == (tmp_path / "plain.jsonl").read_bytes()
    (tmp_path / "renamed.jsonl").write_bytes(raw)  # gzip recognised by its magic bytes, not the suffix
    _assert_same(read_jsonl(tmp_path / "renamed.jsonl"), ds)


def test_group_attributes_argument_overrides(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_jsonl(_dataset(), path, group_attributes={"A": "RACE", "B": "SEX", "Z": "unused"})
    assert read_jsonl(path).group_attributes == {"A": "RACE", "B": "SEX"}


def _line(**over) -> str:
    obj = {"group": "G", "question_id": "q", "question": "Q?", "options": ["a", "b"]}
    obj["distribution"] = [0.5, 0.5]
    obj.update(over)
    return json.dumps({k: v for k, v in obj.items() if v is not _DROP})


_DROP = object()


def test_counts_are_normalised_and_order_is_first_appearance(tmp_path: Path) -> None:
    lines = [
        _line(group="Y", question_id="q2", counts=[1, 3], distribution=_DROP, attribute="ATTR"),
        "",  # blank lines are skipped
        _line(group="X", question_id="q1", ordinals=[2, 1], tags=["t"]),
        _line(group="Y", question_id="q1", counts=[0, 2.5], distribution=_DROP, ordinals=[2, 1], tags=["t"]),
        _line(group="X", question_id="q2", distribution=[0.2, 0.8004]),  # within 1e-3: renormalised
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ds = read_jsonl(path)
    assert ds.groups == ["Y", "X"]
    assert [q.qid for q in ds.questions] == ["q2", "q1"]
    assert ds.question("q1").ordinals == (2.0, 1.0)
    assert ds.question("q1").tags == frozenset({"t"})
    assert ds.question("q2").ordinals is None
    assert ds.group_attributes == {"Y": "ATTR"}
    np.testing.assert_allclose(ds.dist("Y", "q2"), [0.25, 0.75])
    np.testing.assert_allclose(ds.dist("Y", "q1"), [0.0, 1.0])
    np.testing.assert_allclose(ds.dist("X", "q2"), np.array([0.2, 0.8004]) / 1.0004)
    assert ds.dist("X", "q2").sum() == pytest.approx(1.0, abs=1e-15)


def test_empty_file_gives_empty_dataset(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    ds = read_jsonl(path)
    assert ds.groups == [] and ds.questions == []


BAD_LINES = {
    "bad JSON": ('{"group": "G",', "bad JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "missing group": (_line(group=_DROP), "missing field 'group'"),
    "missing question_id": (_line(question_id=_DROP), "missing field 'question_id'"),
    "missing question": (_line(question=_DROP), "missing field 'question'"),
    "missing options": (_line(options=_DROP), "missing field 'options'"),
    "missing distribution": (_line(distribution=_DROP), "missing field 'distribution'"),
    "both distribution and counts": (_line(counts=[1, 1]), "exactly one of"),
    "null group": (_line(group=None), "missing field 'group'"),
    "empty group": (_line(group=""), "non-empty string"),
    "question not a string": (_line(question=3), "'question' must be a string"),
    "options not strings": (_line(options=["a", 2]), "list of strings"),
    "empty options": (_line(options=[], distribution=[]), "'options' is empty"),
    "duplicate options": (_line(options=["a", "a"]), "duplicate options ['a']"),
    "distribution length": (_line(distribution=[0.2, 0.3, 0.5]), "has 3 values but there are 2 options"),
    "counts length": (_line(distribution=_DROP, counts=[1]), "has 1 values but there are 2 options"),
    "ordinals length": (_line(ordinals=[1, 2, 3]), "'ordinals' has 3 values"),
    "negative distribution": (_line(distribution=[1.5, -0.5]), "negative"),
    "negative counts": (_line(distribution=_DROP, counts=[3, -1]), "negative"),
    "NaN literal": (
        '{"group": "G", "question_id": "q", "question": "Q", "options": ["a", "b"], "distribution": [NaN, 1.0]}',
        "non-finite number NaN",
    ),
    "Infinity literal": (
        '{"group": "G", "question_id": "q", "question": "Q", "options": ["a", "b"], "counts": [Infinity, 1]}',
        "non-finite number Infinity",
    ),
    "overflow to inf": (
        '{"group": "G", "question_id": "q", "question": "Q", "options": ["a", "b"], "counts": [1e999, 1]}',
        "non-finite value",
    ),
    "non-finite ordinal": (
        '{"group": "G", "question_id": "q", "question": "Q", "options": ["a", "b"], '
        '"distribution": [0.5, 0.5], "ordinals": [1, -Infinity]}',
        "non-finite number",
    ),
    "boolean value": (_line(distribution=[True, False]), "list of numbers"),
    "string value": (_line(distribution=["0.5", "0.5"]), "list of numbers"),
    "all-zero counts": (_line(distribution=_DROP, counts=[0, 0]), "counts are all zero"),
    "distribution not summing to 1": (_line(distribution=[0.5, 0.49]), "sums to 0.99, not 1"),
    "unknown field": (_line(ordinal=[1, 2]), "unknown field(s) ['ordinal']"),
    "tags not strings": (_line(tags=[1]), "'tags' must be a list"),
    "attribute not a string": (_line(attribute=5), "'attribute' must be a non-empty string"),
    "duplicate group and question": (_line(), "duplicate line for group 'G' and question 'q' (first on line 1)"),
    "question text differs": (_line(group="H", question="Other?"), "'question' differs from line 1"),
    "options differ": (_line(group="H", options=["a", "c"]), "'options' differs from line 1"),
    "ordinals differ": (_line(group="H", ordinals=[1, 2]), "'ordinals' differs from line 1"),
    "tags differ": (_line(group="H", tags=["contentious"]), "'tags' differs from line 1"),
    "attribute differs": (_line(question_id="q9", attribute="SEX"), "attribute 'SEX' differs from 'RACE'"),
}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_malformed_line_names_file_and_line(tmp_path: Path, case: str, suffix: str) -> None:
    bad, problem = BAD_LINES[case]
    first = _line(attribute="RACE")
    text = f"{first}\n\n{bad}\n{_line(group='Z')}\n"  # the bad line is line 3 (line 2 is blank)
    path = tmp_path / f"data{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    with pytest.raises(DatasetError) as info:
        read_jsonl(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.line == 3
    assert str(err).startswith(f"{path}, line 3: ")
    assert problem in str(err)


def test_invalid_utf8_and_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(_line().encode() + b"\n" + b'{"group": "\xe9"}\n')
    with pytest.raises(DatasetError, match=r"latin\.jsonl, line 2: not UTF-8"):
        read_jsonl(path)
    body = gzip.compress(("\n".join(_line(group=f"g{i}") for i in range(2000)) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(body[: len(body) // 2])
    with pytest.raises(DatasetError, match=r"cut\.jsonl\.gz, line \d+: unreadable"):
        read_jsonl(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_failed_write_leaves_nothing(tmp_path: Path, name: str) -> None:
    ds = _dataset()
    ds.dists["B"]["q3"] = np.array([np.nan, 1.0])  # the last line is invalid: fails mid-way
    path = tmp_path / name
    expected = r"line 6: group 'B', question 'q3': field 'distribution' has a non-finite value"
    with pytest.raises(DatasetError, match=expected):
        write_jsonl(ds, path)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_jsonl(_dataset(), path)
    before = path.read_bytes()
    ds = _dataset()
    ds.dists["A"]["q1"] = np.array([0.5, 0.5])  # wrong number of options
    with pytest.raises(DatasetError, match="has 2 values but there are 3 options"):
        write_jsonl(ds, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_write_refuses_unanswered_questions_and_silent_groups(tmp_path: Path) -> None:
    ds = _dataset()
    ds.questions.append(Question("q5", "Nobody answered", ("a", "b")))
    ds = PreferenceDataset(ds.questions, ds.groups, ds.dists)
    with pytest.raises(DatasetError, match=r"questions without any group answer cannot be written: \['q5'\]"):
        write_jsonl(ds, tmp_path / "x.jsonl")
    ds = _dataset()
    ds.groups.append("C")
    with pytest.raises(DatasetError, match=r"groups without any answer cannot be written: \['C'\]"):
        write_jsonl(ds, tmp_path / "x.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_written_file_is_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_jsonl(_dataset(), path)
    assert path.stat().st_mode & 0o777 == 0o644
