"""The NYT books importer (synthetic and real data), `gpo import nytbooks`, and the shipped processed file."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from service.training.nytbooks import (
    NYT_PROMPT,
    import_nytbooks,
    import_nytbooks_to,
    import_nytbooks_with_notes,
    shipped_nytbooks_path,
)
from service.training.ratings import RatingsDataset, comparisons, read_ratings_jsonl, write_ratings_jsonl

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_NYT = REPO_ROOT.parent / "shared" / "data" / "nytbooks"
ATTRIBUTE_NAMES = ["gender", "race", "party", "income", "age"]
CONFLICTING_INCOME = "6653904d974360d0c90b6bf8"  # two demographics rows with different incomes


@pytest.fixture(scope="module")
def nyt_root() -> Path:
    if not (SHARED_NYT / "individual_annotations" / "NYTIMES_proportions_ID.json").is_file():
        pytest.skip(f"raw NYT books data not found at {SHARED_NYT}")
    return SHARED_NYT


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
