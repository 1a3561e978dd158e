"""A user's own table as group answers: a long CSV with a column mapping, a JSONL with other keys; each error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.training.datasets import Question
from service.training.jsonl import read_jsonl, write_jsonl
from service.training.records import DatasetError
from service.training.tabular import CsvColumns, parse_field_map, read_csv_table, read_mapped_jsonl

COLUMNS = CsvColumns(
    group="country", question_id="qid", question="text", option="answer", count="n", ordinal="scale", tags="labels"
)
HEADER = "country,qid,text,answer,n,scale,labels\n"
# B lists q1's options in another order; q2 is answered by A only; rows of a (group, question) need not be adjacent
ROWS = (
    "A,q1,Do you agree?,yes,30,1,core;x\n"
    "A,q1,Do you agree?,no,10,2,x;core\n"
    "A,q2,Pick one,red,1,,\n"
    "B,q1,Do you agree?,no,5,2,core;x\n"
    "A,q2,Pick one,blue,3,,\n"
    "B,q1,Do you agree?,yes,15,1,x;core\n"
)


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_round_trip_gives_the_distributions(tmp_path: Path) -> None:
    ds = read_csv_table(write(tmp_path, HEADER + ROWS), COLUMNS)
    out = tmp_path / "out.jsonl"
    write_jsonl(ds, out)
    back = read_jsonl(out)
    assert back.groups == ["A", "B"]
    assert back.questions == [
        Question("q1", "Do you agree?", ("yes", "no"), (1.0, 2.0), frozenset({"core", "x"})),
        Question("q2", "Pick one", ("red", "blue")),
    ]
    assert back.dists == {
        "A": {"q1": pytest.approx(np.array([0.75, 0.25])), "q2": pytest.approx(np.array([0.25, 0.75]))},
        "B": {"q1": pytest.approx(np.array([0.75, 0.25]))},  # reordered to the question's options
    }


def test_csv_with_shares_attribute_and_another_delimiter(tmp_path: Path) -> None:
    text = (
        "g;attr;qid;q;opt;share\n"
        "Dem;PARTY;q1;Q?;a;0.2\nDem;PARTY;q1;Q?;b;0.8\nRep;PARTY;q1;Q?;a;0.6\nRep;PARTY;q1;Q?;b;0.4\n"
    )
    columns = CsvColumns("g", "qid", "q", "opt", share="share", attribute="attr")
    ds = read_csv_table(write(tmp_path, text), columns, delimiter=";")
    assert ds.group_attributes == {"Dem": "PARTY", "Rep": "PARTY"}
    assert ds.questions == [Question("q1", "Q?", ("a", "b"))]
    np.testing.assert_array_equal(ds.dist("Rep", "q1"), [0.6, 0.4])


def test_exactly_one_of_count_and_share() -> None:
    with pytest.raises(ValueError, match="exactly one of a count column"):
        CsvColumns("g", "q", "t", "o")
    with pytest.raises(ValueError, match="exactly one of a count column"):
        CsvColumns("g", "q", "t", "o", count="n", share="s")


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (
            "country,qid,text,option,n\n",
            1,
            "missing column(s) ['answer', 'scale', 'labels']; the header has "
            "['country', 'qid', 'text', 'option', 'n'] (delimiter ',')",
        ),
        (HEADER + "A,q1,Q?,yes,many,1,\n", 2, "column 'n': 'many' is not a number"),
        (HEADER + "A,q1,Q?,yes,nan,1,\n", 2, "column 'n': 'nan' is not a finite number"),
        (HEADER + "A,q1,Q?,yes,-1,1,\n", 2, "column 'n': '-1' is negative"),
        (HEADER + "A,q1,Q?,yes,1,low,\n", 2, "column 'scale': 'low' is not a number"),
        (HEADER + "A,q1,Q?,yes,1,1\n", 2, "6 fields, the header has 7"),
        (HEADER + ",q1,Q?,yes,1,1,\n", 2, "column 'country' is empty"),
        (
            HEADER + "A,q1,Q?,yes,1,1,\nA,q1,Q!,no,1,2,\n",
            3,
            "group 'A', question 'q1': question text 'Q!' differs from 'Q?' on line 2",
        ),
        (
            HEADER + "A,q1,Q?,yes,1,1,\nA,q1,Q?,yes,2,1,\n",
            3,
            "group 'A', question 'q1': option 'yes' again (first on line 2)",
        ),
        (  # the question's text differs between groups: the JSONL reader's rule, at B's first row
            HEADER + "A,q1,Q?,yes,1,1,\nA,q1,Q?,no,1,2,\nB,q1,Other?,yes,1,1,\nB,q1,Other?,no,1,2,\n",
            4,
            "question 'q1': 'question' differs from line 2",
        ),
        (
            HEADER + "A,q1,Q?,yes,1,1,\nA,q1,Q?,no,1,2,\nB,q1,Q?,yes,1,1,\n",
            4,
            "question 'q1': group 'B' gives options ['yes'] but group 'A' (line 2) gave ['yes', 'no']; every group "
            "lists the same options (a row with count or share 0 for an option nobody in the group chose)",
        ),
        (
            HEADER + "A,q1,Q?,yes,1,1,\nA,q1,Q?,no,1,2,\nB,q1,Q?,yes,1,1,\nB,q1,Q?,no,1,3,\n",
            4,
            "question 'q1': 'ordinals' differs from line 2",
        ),
        (
            HEADER + "A,q1,Q?,yes,1,1,\nA,q1,Q?,no,1,,\n",
            2,
            "group 'A', question 'q1': ordinals given for some options only",
        ),
        (HEADER + "A,q1,Q?,yes,0,1,\nA,q1,Q?,no,0,2,\n", 2, "counts are all zero"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DatasetError) as info:
        read_csv_table(path, COLUMNS)
    assert (info.value.line, info.value.problem) == (line, problem)
    assert str(info.value) == f"{path}, line {line}: {problem}"


def test_csv_shares_must_sum_to_one_and_the_file_needs_rows(tmp_path: Path) -> None:
    columns = CsvColumns("g", "q", "t", "o", share="s")
    with pytest.raises(DatasetError, match=r"line 2: distribution sums to 0.9, not 1"):
        read_csv_table(write(tmp_path, "g,q,t,o,s\nA,q1,T,a,0.5\nA,q1,T,b,0.4\n"), columns)
    with pytest.raises(DatasetError, match="no data rows"):
        read_csv_table(write(tmp_path, "g,q,t,o,s\n\n"), columns)
    with pytest.raises(DatasetError, match="empty file: no header row"):
        read_csv_table(write(tmp_path, ""), columns)


# ---------------------------------------------------------------------------------------------- JSONL


def write_objects(tmp_path: Path, objects: list[dict]) -> Path:
    return write(tmp_path, "".join(json.dumps(o) + "\n" for o in objects), "theirs.jsonl")


THEIRS = [
    {"country": "A", "id": "q1", "question": "Q?", "answers": ["yes", "no"], "n": [3, 1], "note": "x"},
    {"country": "B", "id": "q1", "question": "Q?", "answers": ["yes", "no"], "n": [1, 1], "note": "y"},
]
MAP = ["group=country", "question_id=id", "options=answers", "counts=n"]


def test_mapped_jsonl_renames_keys(tmp_path: Path) -> None:
    ds = read_mapped_jsonl(write_objects(tmp_path, THEIRS), parse_field_map(MAP), ignore_extra=True)
    assert ds.groups == ["A", "B"] and ds.questions == [Question("q1", "Q?", ("yes", "no"))]
    np.testing.assert_array_equal(ds.dist("A", "q1"), [0.75, 0.25])


def test_mapped_jsonl_refuses_extra_keys_unless_told(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"line 1: unknown key\(s\) \['note'\]: map them .* --ignore-extra"):
        read_mapped_jsonl(write_objects(tmp_path, THEIRS), parse_field_map(MAP))


def test_mapped_jsonl_missing_key_and_the_readers_rules(tmp_path: Path) -> None:
    objects = [dict(THEIRS[0], note=None), {k: v for k, v in THEIRS[1].items() if k != "country"}]
    with pytest.raises(DatasetError, match=r"line 2: missing key 'country' \(mapped to the field 'group'\)"):
        read_mapped_jsonl(write_objects(tmp_path, objects), parse_field_map(MAP), ignore_extra=True)
    bad = [dict(THEIRS[0], n=[1, 2, 3])]
    with pytest.raises(DatasetError, match="line 1: field 'counts' has 3 values but there are 2 options"):
        read_mapped_jsonl(write_objects(tmp_path, bad), parse_field_map(MAP), ignore_extra=True)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["group"], "expected FIELD=KEY"),
        (["=country"], "expected FIELD=KEY"),
        (["team=country"], "'team' is not a field of the format"),
        (["group=a", "group=b"], "'group' is mapped twice"),
        (["group=a", "question=a"], "the key 'a' is mapped twice"),
    ],
)
def test_field_map_errors(pairs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_field_map(pairs)
