"""`gpo import csv|jsonl` (write, --dry-run, errors) and `gpo check`, run in-process; nothing is embedded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from service.cli import app
from service.training.jsonl import read_jsonl

CSV_ARGS = ["--group", "g", "--question-id", "qid", "--question", "text", "--option", "opt", "--count", "n"]


def complete_csv(path: Path, n_groups: int = 4, n_questions: int = 22) -> Path:
    """Every group answers every two-option question: counts (1 + group, 1 + question)."""
    rows = ["g,qid,text,opt,n"]
    for i in range(n_groups):
        for j in range(n_questions):
            rows += [f"G{i},q{j},Question {j}?,yes,{1 + i}", f"G{i},q{j},Question {j}?,no,{1 + j}"]
    path.write_text("\n".join(rows) + "\n")
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_csv_dry_run_prints_the_counts_and_writes_nothing(tmp_path: Path) -> None:
    src = complete_csv(tmp_path / "t.csv")
    result = invoke("import", "csv", src, *CSV_ARGS, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "dry run: nothing written",
        "groups: 4",
        "questions: 22 (0 ordinal, 22 non-ordinal; 0 ordinal with all-equal ordinals, not scored)",
        "answers (group, question rows): 88",
        "questions answered by >= 3 groups (shared: the prior's loadings learn from them): 22",
        "complete questions (answered by every group): 22",
        "groups with >= 21 scorable answers (usable as test groups at 20 context questions): 4",
        "scorable targets (those groups' scorable answers beyond 20 context questions, summed): 8",
        "check: training and evaluation can use this dataset",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_csv_write_reads_back(tmp_path: Path) -> None:
    src, out = complete_csv(tmp_path / "t.csv"), tmp_path / "out.jsonl.gz"
    result = invoke("import", "csv", src, out, *CSV_ARGS)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}\ngroups: 4\n")
    ds = read_jsonl(out)
    assert ds.groups == ["G0", "G1", "G2", "G3"] and len(ds.questions) == 22
    np.testing.assert_allclose(ds.dist("G2", "q5"), [3 / 9, 6 / 9])


def test_csv_dry_run_fails_fast_when_training_cannot_work(tmp_path: Path) -> None:
    src = complete_csv(tmp_path / "t.csv", n_groups=2, n_questions=5)
    result = invoke("import", "csv", src, *CSV_ARGS, "--dry-run")
    assert result.exit_code == 1
    assert "error: 2 group(s): training needs at least 3 (fit, validation and test groups); add groups" in result.stderr
    assert "error: no group answered 21 or more scorable questions" in result.stderr
    # writing the same data works; what stops training is a warning there
    result = invoke("import", "csv", src, tmp_path / "out.jsonl", *CSV_ARGS)
    assert result.exit_code == 0 and "warning: 2 group(s)" in result.stderr
    assert read_jsonl(tmp_path / "out.jsonl").groups == ["G0", "G1"]


def test_csv_errors(tmp_path: Path) -> None:
    src = tmp_path / "t.csv"
    src.write_text("g,qid,text,opt,n\nA,q1,Q?,yes,lots\n")
    result = invoke("import", "csv", src, tmp_path / "out.jsonl", *CSV_ARGS)
    assert result.exit_code == 1
    assert result.stderr == f"error: {src}, line 2: column 'n': 'lots' is not a number\n"
    assert not (tmp_path / "out.jsonl").exists()
    result = invoke("import", "csv", src, *CSV_ARGS, "--share", "n", "--dry-run")
    assert result.exit_code == 2 and "exactly one of a count column" in result.output
    result = invoke("import", "csv", src, "--dry-run", "--group", "g")
    assert result.exit_code == 2 and "--question-id" in result.output
    result = invoke("import", "csv", src, *CSV_ARGS)  # neither OUT nor --dry-run
    assert result.exit_code == 2 and "give OUT, or --dry-run without OUT" in result.output


def test_jsonl_with_a_key_map(tmp_path: Path) -> None:
    src = tmp_path / "theirs.jsonl"
    lines = [
        {"who": f"G{i}", "qid": f"q{j}", "question": "?", "options": ["a", "b"], "p": [0.5, 0.5], "src": "survey"}
        for i in range(3)
        for j in range(3)
    ]
    src.write_text("".join(json.dumps(o) + "\n" for o in lines))
    maps = ["--map", "group=who", "--map", "question_id=qid", "--map", "distribution=p"]
    result = invoke("import", "jsonl", src, "--dry-run", *maps)
    assert result.exit_code == 1 and "unknown key(s) ['src']" in result.stderr
    result = invoke("import", "jsonl", src, tmp_path / "out.jsonl", *maps, "--ignore-extra")
    assert result.exit_code == 0, result.output
    assert "groups: 3" in result.stdout and "warning: no group answered 21" in result.stderr
    assert read_jsonl(tmp_path / "out.jsonl").groups == ["G0", "G1", "G2"]
    result = invoke("import", "jsonl", src, "--dry-run", "--map", "who=group")
    assert result.exit_code == 2 and "'who' is not a field of the format" in result.output


def test_check_command(tmp_path: Path) -> None:
    result = invoke("check")  # the shipped OpinionQA
    assert result.exit_code == 0, result.output
    assert "groups: 17" in result.stdout
    src, out = complete_csv(tmp_path / "t.csv", n_groups=3, n_questions=10), tmp_path / "small.jsonl"
    assert invoke("import", "csv", src, out, *CSV_ARGS).exit_code == 0
    result = invoke("check", out)
    assert result.exit_code == 1 and "error: no group answered 21" in result.stderr
    result = invoke("check", tmp_path / "missing.jsonl")
    assert result.exit_code == 1 and result.stderr.startswith("error:")
