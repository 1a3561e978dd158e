"""Per-person ratings: the JSONL format (read, write, validation), comparisons, the matrix, the NYT books
importer (synthetic and real data) and the shipped processed file."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from service.training.ratings import (
    NYT_PROMPT,
    RatedItem,
    RatingsDataset,
    comparisons,
    import_nytbooks,
    import_nytbooks_to,
    import_nytbooks_with_notes,
    load_nytbooks,
    read_ratings_jsonl,
    shipped_nytbooks_path,
    write_ratings_jsonl,
)
from service.training.records import DatasetError

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_NYT = REPO_ROOT.parent / "shared" / "data" / "nytbooks"
ATTRIBUTE_NAMES = ["gender", "race", "party", "income", "age"]
CONFLICTING_INCOME = "6653904d974360d0c90b6bf8"  # two demographics rows with different incomes


@pytest.fixture(scope="module")
def nyt() -> RatingsDataset:
    return load_nytbooks()


@pytest.fixture(scope="module")
def nyt_root() -> Path:
    if not (SHARED_NYT / "individual_annotations" / "NYTIMES_proportions_ID.json").is_file():
        pytest.skip(f"raw NYT books data not found at {SHARED_NYT}")
    return SHARED_NYT


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


# ------------------------------------------------------------------------------ synthetic importer


def _fake_nyt(root: Path, ratings: dict[str, dict[str, dict[str, str]]], demographics: list[list[str]]) -> Path:
    """A minimal NYT books folder: data.json, the per-annotator ratings and the demographics CSV."""
    opts = ["1: Very unlikely", "2: Somewhat unlikely", "3: Somewhat likely", "4: Very likely"]
    books = {
        "Book One By A. Author": {"MC_options": opts, "genre": "Fiction", "summary": "One."},
        "Unrated By Nobody": {"MC_options": opts, "genre": "Poetry", "summary": "Never rated."},
        "Book Two By B. Writer": {"MC_options": opts, "genre": "History", "summary": "Two."},
    }
    (root / "individual_annotations").mkdir(parents=True)
    (root / "data.json").write_text(json.dumps(books))
    src = {b: {"MC_options": [1, 2, 3, 4], "genre": v["genre"], "summary": v["summary"], **ratings.get(b, {})}
           for b, v in books.items()}  # fmt: skip
    (root / "individual_annotations" / "NYTIMES_proportions_ID.json").write_text(json.dumps(src))
    with open(root / "individual_annotations" / "nytimes_annotator_demographics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "QDem_Gend", "QDem_Race", "Q_DemRepub", "QDem_Income", "Q84", "QDem_Age"])
        for i, row in enumerate(demographics):
            w.writerow([i, *row])
    return root


_DEMO = [
    ["Female", "Asian", "Democrat", "$100,000 or more", "ann", "30"],
    ["Male", "White", "Republican", "Less than $30,000", "bob", "51"],
    ["Male", "White", "Republican", "Less than $30,000", "bob", "51"],  # identical repeat: fine
]


def test_import_synthetic(tmp_path: Path) -> None:
    ratings = {
        "Book One By A. Author": {
            "Democrat": {"ann": "3: Somewhat likely"},
            "Female": {"ann": "3: Somewhat likely"},
            "Male": {"bob": "1: Very unlikely"},
        },
        "Book Two By B. Writer": {
            "Republican": {"bob": "4: Very likely", "cat": "2: Somewhat unlikely"},
            "Male": {"bob": "4: Very likely"},
        },
    }
    root = _fake_nyt(tmp_path / "nyt", ratings, _DEMO)
    ds, notes = import_nytbooks_with_notes(root)
    assert [it.item_id for it in ds.items] == ["Book One By A. Author", "Book Two By B. Writer"]  # unrated dropped
    assert ds.item("Book Two By B. Writer").text == "Book Two By B. Writer (History): Two."
    assert ds.people == ["ann", "bob", "cat"]
    assert ds.scores == {
        "ann": {"Book One By A. Author": 3.0},
        "bob": {"Book One By A. Author": 1.0, "Book Two By B. Writer": 4.0},
        "cat": {"Book Two By B. Writer": 2.0},
    }
    assert ds.scale == (1.0, 4.0) and ds.prompt == NYT_PROMPT
    assert ds.attributes["ann"] == {
        "gender": "Female", "race": "Asian", "party": "Democrat", "income": "$100,000 or more", "age": "30",
    }  # fmt: skip
    assert list(ds.attributes["bob"]) == ATTRIBUTE_NAMES
    assert ds.attributes["cat"] == {}
    assert (notes.entries, notes.repeated, notes.rating_conflicts) == (6, 2, ())
    assert (notes.demographic_rows, notes.repeated_demographic_rows, notes.attribute_conflicts) == (3, 1, ())
    assert notes.without_attributes == ("cat",)
    # what the importer writes reads back identically
    out = tmp_path / "out.jsonl.gz"
    written, _ = import_nytbooks_to(root, out)
    assert read_ratings_jsonl(out) == written == ds


def test_import_rating_conflicts(tmp_path: Path) -> None:
    ratings = {
        "Book One By A. Author": {
            "Democrat": {"ann": "3: Somewhat likely", "bob": "2: Somewhat unlikely"},
            "Female": {"ann": "4: Very likely"},  # ann rates Book One twice, differently
        },
        "Book Two By B. Writer": {"Democrat": {"ann": "1: Very unlikely"}},
    }
    root = _fake_nyt(tmp_path / "nyt", ratings, _DEMO)
    with pytest.raises(ValueError, match=r"1 \(annotator, book\) pairs have conflicting ratings.*ann"):
        import_nytbooks(root)
    book = "Book One By A. Author"
    ds, notes = import_nytbooks_with_notes(root, on_rating_conflict="drop")
    assert notes.rating_conflicts == (("ann", book, (3.0, 4.0)),)
    assert ds.scores["ann"] == {"Book Two By B. Writer": 1.0}
    assert ds.people == ["bob", "ann"]  # ordered by the first book rated (ann's Book One rating was dropped)
    assert import_nytbooks(root, on_rating_conflict="first").scores["ann"][book] == 3.0
    assert import_nytbooks(root, on_rating_conflict="last").scores["ann"][book] == 4.0
    write_ratings_jsonl(ds, tmp_path / "out.jsonl")
    assert read_ratings_jsonl(tmp_path / "out.jsonl") == ds


def test_import_attribute_conflicts(tmp_path: Path) -> None:
    ratings = {"Book One By A. Author": {"Democrat": {"ann": "2: Somewhat unlikely"}}}
    demo = [_DEMO[0], ["Female", "Asian", "Democrat", "Less than $30,000", "ann", "30"]]
    root = _fake_nyt(tmp_path / "nyt", ratings, demo)
    ds, notes = import_nytbooks_with_notes(root)  # default: drop the conflicting attribute
    assert notes.attribute_conflicts == (("ann", "income", ("$100,000 or more", "Less than $30,000")),)
    assert ds.attributes["ann"] == {"gender": "Female", "race": "Asian", "party": "Democrat", "age": "30"}
    with pytest.raises(ValueError, match="conflicting income"):
        import_nytbooks(root, on_attribute_conflict="raise")
    assert import_nytbooks(root, on_attribute_conflict="first").attributes["ann"]["income"] == "$100,000 or more"
    assert import_nytbooks(root, on_attribute_conflict="last").attributes["ann"]["income"] == "Less than $30,000"


def test_import_refuses_unknown_labels_and_books(tmp_path: Path) -> None:
    root = _fake_nyt(tmp_path / "a", {"Book One By A. Author": {"Male": {"bob": "5: Certain"}}}, _DEMO)
    with pytest.raises(ValueError, match="'5: Certain' is not one of"):
        import_nytbooks(root)
    root = _fake_nyt(tmp_path / "b", {}, _DEMO)
    path = root / "individual_annotations" / "NYTIMES_proportions_ID.json"
    src = json.loads(path.read_text())
    src["Stray Book"] = {"Male": {"bob": "1: Very unlikely"}}
    path.write_text(json.dumps(src))
    with pytest.raises(ValueError, match="books not in data.json"):
        import_nytbooks(root)
    with pytest.raises(FileNotFoundError):
        import_nytbooks(tmp_path / "missing")


def test_cli_import_nytbooks(tmp_path: Path) -> None:
    from service.cli import app

    ratings = {"Book One By A. Author": {"Male": {"bob": "1: Very unlikely"}, "Female": {"ann": "4: Very likely"}}}
    root = _fake_nyt(tmp_path / "nyt", ratings, _DEMO)
    out = tmp_path / "out.jsonl.gz"
    result = CliRunner().invoke(app, ["import", "nytbooks", str(root), str(out)])
    assert result.exit_code == 0, result.output
    assert "2 people, 1 items, 2 ratings" in result.output
    assert "0 (annotator, book) pairs with conflicting ratings" in result.output
    assert read_ratings_jsonl(out).n_ratings() == 2
    result = CliRunner().invoke(app, ["import", "nytbooks", str(root), str(out), "--on-rating-conflict", "maybe"])
    assert result.exit_code != 0


# ------------------------------------------------------------------------------------ shipped file


def test_shipped_counts(nyt: RatingsDataset) -> None:
    assert len(nyt.people) == 335
    assert len(nyt.items) == 235
    assert nyt.n_ratings() == 9048
    per_person = [len(nyt.rated(p)) for p in nyt.people]
    assert (min(per_person), statistics.median(per_person), max(per_person)) == (25, 27, 52)
    assert Counter(per_person) == {25: 144, 27: 179, 43: 1, 52: 11}
    per_book = Counter(i for p in nyt.people for i in nyt.scores[p])
    assert (min(per_book.values()), statistics.median(per_book.values()), max(per_book.values())) == (33, 39, 42)
    assert Counter(s for v in nyt.scores.values() for s in v.values()) == {1.0: 2782, 2.0: 2536, 3.0: 2556, 4.0: 1174}
    assert sum(len(comparisons(nyt, p)) for p in nyt.people) == 75545


def test_shipped_items_scale_and_prompt(nyt: RatingsDataset) -> None:
    assert nyt.scale == (1.0, 4.0)
    assert nyt.prompt == "How likely would you be to read this book?"
    first = nyt.items[0]
    assert first.item_id == "The Bee Sting By Paul Murray"
    assert first.text.startswith("The Bee Sting By Paul Murray (Fiction): In Murray’s boisterous tragicomic novel")
    assert len({it.item_id for it in nyt.items}) == 235
    assert all(re.fullmatch(r".+ By .+ \([^()]+\): .+", it.text) for it in nyt.items)


def test_shipped_attributes(nyt: RatingsDataset) -> None:
    assert set(nyt.attributes) == set(nyt.people)
    for p in nyt.people:
        expected = [a for a in ATTRIBUTE_NAMES if not (p == CONFLICTING_INCOME and a == "income")]
        assert list(nyt.attributes[p]) == expected
        assert all(isinstance(v, str) and v for v in nyt.attributes[p].values())
    assert Counter(a["gender"] for a in nyt.attributes.values()) == {"Female": 199, "Male": 126, "Other": 10}
    assert Counter(a["party"] for a in nyt.attributes.values()) == {
        "Democrat": 178, "Republican": 155, "Other (please specify)": 2,
    }  # fmt: skip


def test_shipped_matrix(nyt: RatingsDataset) -> None:
    m = nyt.matrix()
    assert m.shape == (335, 235)
    assert int(np.sum(~np.isnan(m))) == 9048
    assert set(np.unique(m[~np.isnan(m)]).tolist()) == {0.0, 1 / 3, 2 / 3, 1.0}
    p = nyt.people[0]
    j = [it.item_id for it in nyt.items].index(nyt.rated(p)[0])
    assert m[0, j] == nyt.normalized(nyt.scores[p][nyt.rated(p)[0]])


def test_provenance_hashes_match_shipped_file() -> None:
    path = shipped_nytbooks_path()
    raw = path.read_bytes()
    provenance = (path.parent / "PROVENANCE.md").read_text()
    hashes = re.findall(r"`([0-9a-f]{64})`", provenance)[-2:]  # the first three are the source files'
    assert hashes == [hashlib.sha256(raw).hexdigest(), hashlib.sha256(gzip.decompress(raw)).hexdigest()]
    assert raw[4:8] == b"\0\0\0\0"


def test_shipped_file_rewrites_to_the_same_bytes(nyt: RatingsDataset, tmp_path: Path) -> None:
    out = tmp_path / "nyt.jsonl.gz"
    write_ratings_jsonl(nyt, out)
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(shipped_nytbooks_path().read_bytes())
    assert read_ratings_jsonl(out) == nyt


def test_package_data_covers_the_shipped_files() -> None:
    import tomllib
    from fnmatch import fnmatch

    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    rel = ["nytbooks/nytbooks_ratings.jsonl.gz", "nytbooks/PROVENANCE.md"]
    assert all(any(fnmatch(r, g) for g in globs["service.data"]) for r in rel)


# ------------------------------------------------------------------------------ real raw data (optional)


def test_import_of_raw_data_matches_shipped_file(nyt_root: Path, nyt: RatingsDataset) -> None:
    ds, notes = import_nytbooks_with_notes(nyt_root)
    assert ds == nyt
    assert (notes.entries, notes.repeated) == (17570, 8522)
    assert notes.rating_conflicts == ()  # SOURCE.md's 9,048 (annotator, book) ratings, none conflicting
    assert (notes.demographic_rows, notes.repeated_demographic_rows) == (347, 12)
    assert notes.attribute_conflicts == ((CONFLICTING_INCOME, "income", ("Less than $30,000", "$100,000 or more")),)
    assert notes.without_attributes == ()


def test_raw_data_facts(nyt_root: Path) -> None:
    """Independent of the importer: count the raw (annotator, book) pairs and check they never conflict."""
    src = json.loads((nyt_root / "individual_annotations" / "NYTIMES_proportions_ID.json").read_text())
    seen: dict[tuple[str, str], set[str]] = {}
    for book, groups in src.items():
        for annotators in groups.values():
            if isinstance(annotators, dict):
                for person, label in annotators.items():
                    seen.setdefault((person, book), set()).add(label)
    assert len(seen) == 9048
    assert len({p for p, _ in seen}) == 335
    assert all(len(v) == 1 for v in seen.values())
    books = json.loads((nyt_root / "data.json").read_text())
    assert list(books) == list(src) and len(books) == 235
