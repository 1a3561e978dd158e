"""Per-person ratings: the JSONL format (read, write, validation), comparisons and the matrix."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.training.ratings import (
    RatedItem,
    RatingsDataset,
    comparisons,
    read_ratings_jsonl,
    write_ratings_jsonl,
)
from service.training.records import DatasetError


def _small() -> RatingsDataset:
    """3 people, 4 items on a 1..5 scale; p2 has a tie (a, c), p3 rated one item only."""
    items = [RatedItem(i, f"text of {i}") for i in "abcd"]
    scores = {
        "p1": {"a": 1.0, "b": 5.0, "c": 3.0, "d": 2.0},
        "p2": {"a": 4.0, "c": 4.0, "d": 2.5},
        "p3": {"b": 2.0},
    }
    attrs = {"p1": {"party": "Democrat"}, "p2": {}, "p3": {"party": "Republican", "age": "40"}}
    return RatingsDataset(
        items=items, people=["p1", "p2", "p3"], scores=scores, scale=(1.0, 5.0), attributes=attrs, prompt="Like it?"
    )


# ------------------------------------------------------------------------------------ dataset methods


def test_normalized_and_matrix() -> None:
    ds = _small()
    assert ds.normalized(1) == 0.0 and ds.normalized(5) == 1.0 and ds.normalized(2.5) == 0.375
    m = ds.matrix()
    assert m.shape == (3, 4)
    expected = np.array(
        [[0.0, 1.0, 0.5, 0.25], [0.75, np.nan, 0.75, 0.375], [np.nan, 0.25, np.nan, np.nan]], dtype=np.float64
    )
    np.testing.assert_array_equal(np.isnan(m), np.isnan(expected))
    np.testing.assert_array_equal(m, expected)  # NaN compares equal to NaN here
    rows = ds.matrix(["p3", "p1"])
    np.testing.assert_array_equal(rows, expected[[2, 0]])
    assert ds.matrix([]).shape == (0, 4)
    with pytest.raises(KeyError, match="nobody"):
        ds.matrix(["nobody"])


def test_rated_and_item() -> None:
    ds = _small()
    assert ds.rated("p1") == ["a", "b", "c", "d"]
    assert ds.rated("p2") == ["a", "c", "d"]
    assert ds.rated("p3") == ["b"]
    assert ds.item("c") == RatedItem("c", "text of c")
    with pytest.raises(KeyError):
        ds.item("zz")
    with pytest.raises(KeyError):
        ds.rated("zz")


def test_comparisons_labels_order_and_ties() -> None:
    ds = _small()
    # p1 rated 4 items, all different: 4 * 3 / 2 pairs, a before b in item order
    assert comparisons(ds, "p1") == [
        ("a", "b", 0.0),
        ("a", "c", 0.0),
        ("a", "d", 0.0),
        ("b", "c", 1.0),
        ("b", "d", 1.0),
        ("c", "d", 1.0),
    ]
    # p2: a and c tie (left out); 3 items -> 3 pairs minus 1 tie
    assert comparisons(ds, "p2") == [("a", "d", 1.0), ("c", "d", 1.0)]
    assert comparisons(ds, "p3") == []  # one item: no pair


def test_comparisons_restricted_to_items() -> None:
    ds = _small()
    # the order is the dataset's item order, not the order of item_ids; unrated ids are ignored
    assert comparisons(ds, "p1", ["d", "b"]) == [("b", "d", 1.0)]
    assert comparisons(ds, "p2", ["b", "c", "d"]) == [("c", "d", 1.0)]
    assert comparisons(ds, "p1", []) == []
    with pytest.raises(KeyError, match="zz"):
        comparisons(ds, "p1", ["a", "zz"])
    with pytest.raises(KeyError):
        comparisons(ds, "nobody")


def test_comparisons_agree_with_the_matrix(nyt: RatingsDataset) -> None:
    m = nyt.matrix()
    col = {it.item_id: j for j, it in enumerate(nyt.items)}
    for i, p in enumerate(nyt.people[:20]):
        pairs = comparisons(nyt, p)
        row = m[i][~np.isnan(m[i])]
        n_ties = sum(c * (c - 1) // 2 for c in Counter(row.tolist()).values())
        assert len(pairs) == len(row) * (len(row) - 1) // 2 - n_ties
        for a, b, y in pairs:
            assert col[a] < col[b]
            assert y == float(m[i, col[a]] > m[i, col[b]])


# ------------------------------------------------------------------------------------ write / read


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_round_trip_is_exact_and_deterministic(tmp_path: Path, name: str) -> None:
    ds = _small()
    path = tmp_path / name
    write_ratings_jsonl(ds, path)
    back = read_ratings_jsonl(path)
    assert back == ds
    first = path.read_bytes()
    write_ratings_jsonl(back, path)
    assert path.read_bytes() == first
    assert (path.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    if name.endswith(".gz"):
        assert first[:2] == b"\x1f\x8b" and first[4:8] == b"\0\0\0\0"  # mtime 0
        text = gzip.decompress(first).decode()
    else:
        text = first.decode()
    lines = [json.loads(line) for line in text.splitlines()]
    # item-major; integral numbers written as integers; empty attributes omitted
    assert [(r["item"], r["person"]) for r in lines] == [
        ("a", "p1"), ("a", "p2"), ("b", "p1"), ("b", "p3"), ("c", "p1"), ("c", "p2"), ("d", "p1"), ("d", "p2"),
    ]  # fmt: skip
    assert lines[0] == {
        "person": "p1",
        "item": "a",
        "text": "text of a",
        "score": 1,
        "scale": [1, 5],
        "prompt": "Like it?",
        "attributes": {"party": "Democrat"},
    }
    assert "attributes" not in lines[1] and lines[7]["score"] == 2.5


def test_write_without_prompt_or_attributes(tmp_path: Path) -> None:
    ds = _small()
    ds.prompt = ""
    ds.attributes = {}
    write_ratings_jsonl(ds, tmp_path / "r.jsonl")
    back = read_ratings_jsonl(tmp_path / "r.jsonl")
    assert back.prompt == "" and back.attributes == {p: {} for p in ds.people}
    assert all(set(json.loads(x)) == {"person", "item", "text", "score", "scale"} for x in open(tmp_path / "r.jsonl"))


def test_write_refuses_and_leaves_existing_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("old")
    bad = _small()
    bad.scores["p2"]["d"] = 7.0  # outside the 1..5 scale: found while writing item d's lines
    with pytest.raises(DatasetError, match=r"line 8: person 'p2', item 'd': score 7 is outside the scale \[1, 5\]"):
        write_ratings_jsonl(bad, path)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]

    unrated = _small()
    unrated.items.append(RatedItem("e", "nobody rated this"))
    with pytest.raises(DatasetError, match="items without any rating"):
        write_ratings_jsonl(unrated, path)
    silent = _small()
    silent.people.append("p4")
    silent.scores["p4"] = {}
    with pytest.raises(DatasetError, match="people without any rating"):
        write_ratings_jsonl(silent, path)
    stray = _small()
    stray.scores["p1"]["zz"] = 2.0
    with pytest.raises(DatasetError, match="items not in the dataset"):
        write_ratings_jsonl(stray, path)
    assert path.read_text() == "old"


def _line(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"person": "p1", "item": "a", "text": "A", "score": 2, "scale": [1, 4]}
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not _DROP}


_DROP = object()


def _write_lines(path: Path, records: list[dict[str, Any] | str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def test_read_orders_by_first_appearance_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "r.jsonl",
        [
            _line(person="q", item="b", text="B", score=4, attributes={"x": "1"}),
            "",
            _line(person="p", item="a", text="A", score=1.5, prompt="P?"),
            _line(person="q", item="a", text="A", score=1, attributes=None, prompt=None),
        ],
    )
    ds = read_ratings_jsonl(path)
    assert [it.item_id for it in ds.items] == ["b", "a"]
    assert ds.people == ["q", "p"]
    assert ds.scores == {"q": {"b": 4.0, "a": 1.0}, "p": {"a": 1.5}}
    assert ds.scale == (1.0, 4.0) and ds.prompt == "P?"
    assert ds.attributes == {"q": {"x": "1"}, "p": {}}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_line(score="3"), "field 'score' must be a number"),
        (_line(score=True), "field 'score' must be a number"),
        ('{"person": "p1", "item": "a", "text": "A", "score": NaN, "scale": [1, 4]}', "non-finite number NaN"),
        (_line(score=5), r"score 5 is outside the scale \[1, 4\]"),
        (_line(score=0.5), r"score 0.5 is outside the scale \[1, 4\]"),
        (_line(scale=[4, 1]), "lowest < highest"),
        (_line(scale=[1]), "list of two numbers"),
        (_line(score=_DROP), "missing field 'score'"),
        (_line(text=""), "field 'text' must be a non-empty string"),
        (_line(person=None), "missing field 'person'"),
        (_line(rating=3), r"unknown field\(s\) \['rating'\]"),
        (_line(attributes={"age": 40}), "values must be strings"),
        (_line(attributes=["a"]), "field 'attributes' must be an object"),
        (_line(prompt=3), "field 'prompt' must be a string"),
        ("[1, 2]", "expected a JSON object"),
        ('{"person": ', "bad JSON"),
    ],
)
def test_read_refuses_a_bad_line_naming_it(tmp_path: Path, bad: Any, message: str) -> None:
    path = _write_lines(tmp_path / "r.jsonl", [_line(item="z", text="Z"), "", bad])
    with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}, line 3: .*{message}") as e:
        read_ratings_jsonl(path)
    assert e.value.line == 3 and e.value.path == str(path)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (_line(score=3), r"duplicate rating of item 'a' by person 'p1' \(first on line 1\)"),
        (_line(person="p2", scale=[0, 10]), r"scale \[0, 10\] differs from \[1, 4\] on line 1 \(one scale per file\)"),
        (_line(person="p2", scale=[1.0, 4.0]), None),  # the same scale written differently is the same scale
        (_line(person="p2", text="A, edited"), "item 'a': 'text' differs from line 1"),
        (_line(item="b", text="B", attributes={"party": "Republican"}), "person 'p1': 'attributes' differ from line 1"),
        (_line(item="b", text="B", attributes={}), "person 'p1': 'attributes' differ from line 1"),
        (_line(item="b", text="B", attributes=_DROP), None),  # attributes may be omitted on some lines
        (_line(person="p2", prompt="Another?"), "'prompt' differs from line 1"),
        (_line(person="p2", prompt=_DROP), None),
    ],
)
def test_read_checks_lines_against_earlier_ones(tmp_path: Path, second: dict, message: str | None) -> None:
    first = _line(attributes={"party": "Democrat"}, prompt="Read it?")
    path = _write_lines(tmp_path / "r.jsonl", [first, second])
    if message is None:
        ds = read_ratings_jsonl(path)
        assert ds.attributes["p1"] == {"party": "Democrat"} and ds.prompt == "Read it?"
        return
    with pytest.raises(DatasetError, match=f", line 2: {message}"):
        read_ratings_jsonl(path)


def test_read_refuses_empty_and_unreadable_files(tmp_path: Path) -> None:
    empty = _write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DatasetError, match="no ratings"):
        read_ratings_jsonl(empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(_line()).encode() + b"\n" + b'{"person": "\xe9"}\n')
    with pytest.raises(DatasetError, match="line 2: not UTF-8"):
        read_ratings_jsonl(latin)
    truncated = tmp_path / "t.jsonl.gz"
    body = "".join(json.dumps(_line(person=f"p{i}")) + "\n" for i in range(50))
    truncated.write_bytes(gzip.compress(body.encode())[:-12])
    with pytest.raises(DatasetError, match="unreadable"):
        read_ratings_jsonl(truncated)
    with pytest.raises(FileNotFoundError):
        read_ratings_jsonl(tmp_path / "missing.jsonl")
