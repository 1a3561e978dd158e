"""GlobalOpinionQA importer: two partial public copies of Anthropic's llm_global_opinions -> a PreferenceDataset.

Sources (see service/data/globalopinionqa/PROVENANCE.md): `globalopinionbench_eval.json` (a JSON list of
`{country, question, options, distribution}`) and `modular_pluralism_distributional_test_small.json` (a JSON
list of `{question: "Question: <text>\\nOptions: A. .. B. ..\\nAnswer:", options, attribute: <country>,
gold_distribution, ...}`). Processing:
- a question is its text and its original option list, both with surrounding whitespace stripped (options
  given as numbers, e.g. `1.0`, become their text `"1.0"`: numeric options stay strings). Its id is
  `GOQA_` + the first 12 hex digits of the sha256 of `json.dumps([text, options], ensure_ascii=False)`
  in UTF-8 (original options, before any is dropped), so the id does not depend on file order. The text
  inside the second file's prompt must be followed by exactly its lettered options, else the import fails;
- a row is one (question, country). Rows in both files are compared after each is renormalised by its sum:
  a largest absolute difference over `AGREE_TOLERANCE` is a disagreement, counted and listed; either way
  the first file's row is kept;
- groups are the countries, with their original labels as group ids (e.g. "India (Current national
  sample)"; "Britain" and "Great Britain" stay two groups, as in the source), all with attribute `country`;
- non-substantive options (`is_non_substantive`: after case folding, curly apostrophes made straight and
  whitespace collapsed, the text starts with "dk", "don't know", "no answer", "missing" or "other missing"
  as a word, contains the word "refused", or is the truncated WVS label "don't -9:-2": the regular
  expression `NON_SUBSTANTIVE`) are dropped from
  the question and its rows renormalised over the remaining options, as the paper does with OpinionQA's
  refusal options. Volunteered substantive answers ("Neither (VOL)", "Depends (VOL)", "Never heard of
  (VOL)", "Can't rate (VOL)", ...) are kept: they are answers, not missing data;
- dropped, and counted: questions left with fewer than 2 options (all their rows), rows whose substantive
  options sum to 0 (among them the rows whose whole distribution sums to 0), and then questions no
  country still answers;
- questions carry no ordinals: every question is non-ordinal, so `metrics.question_alignments` scores
  it with 1 - Jensen-Shannon distance (natural log), as the paper does for GlobalOpinionQA;
- the data is ragged: each country has only the questions it answered. Groups are sorted by label
  (case-folded); questions follow their first appearance in group-major order (each country's questions
  in source order, the first file before the second), which is the order `read_jsonl` gives back.

The processed result ships as `service/data/globalopinionqa/globalopinionqa.jsonl.gz`; `load_globalopinionqa()`
reads it. Regenerate it with `gpo import globalopinionqa <folder> <out>` (or `python -m` this module).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from service.training.datasets import PreferenceDataset, Question
from service.training.jsonl import read_jsonl, write_jsonl

log = logging.getLogger(__name__)

BENCH_FILE = "globalopinionbench_eval.json"  # awesel/GlobalOpinionBench, data/eval.json
PLURALISM_FILE = "modular_pluralism_distributional_test_small.json"  # BunsenFeng/modular_pluralism
ATTRIBUTE = "country"
AGREE_TOLERANCE = 1e-6
MIN_OPTIONS = 2
SHIPPED_FILE = ("globalopinionqa", "globalopinionqa.jsonl.gz")  # under the service.data package
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

NON_SUBSTANTIVE = re.compile(r"^(dk|don't know|no answer|missing|other missing)\b|\brefused\b|^don't -9:-2$")


def is_non_substantive(option: str) -> bool:
    """True for a refusal / don't know / no answer / missing-data option (see the module docstring)."""
    text = " ".join(option.replace("\u2019", "'").casefold().split())
    return NON_SUBSTANTIVE.search(text) is not None


@dataclass(frozen=True)
class SourceRow:
    """One (question, country) row of a source file, as given (options stripped, distribution unnormalised)."""

    text: str
    options: tuple[str, ...]
    country: str
    values: np.ndarray  # [n_options], >= 0


def _option_text(option: Any, where: str) -> str:
    if isinstance(option, str):
        return option.strip()
    if isinstance(option, int | float) and not isinstance(option, bool):
        return repr(option)  # 1.0 -> "1.0": numeric options stay strings
    raise ValueError(f"{where}: option {option!r} is neither text nor a number")


def _values(raw: Any, n: int, where: str) -> np.ndarray:
    if not isinstance(raw, list) or len(raw) != n:
        raise ValueError(f"{where}: the distribution must be a list of {n} numbers, got {raw!r}")
    values = np.array(raw, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"{where}: the distribution has a negative or non-finite value: {raw}")
    return values


def _country(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"{where}: the country must be a non-empty string, got {raw!r}")
    return raw


def _options(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: the options must be a non-empty list, got {raw!r}")
    options = tuple(_option_text(o, where) for o in raw)
    if len(set(options)) != len(options) or not all(options):
        raise ValueError(f"{where}: empty or repeated options {list(options)}")
    return options


def _load_list(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a JSON list of objects")
    return data


def read_bench_rows(path: str | os.PathLike[str]) -> list[SourceRow]:
    """Rows of the GlobalOpinionBench layout: `{country, question, options, distribution}`."""
    path = Path(path)
    rows = []
    for i, r in enumerate(_load_list(path)):
        where = f"{path}, item {i}"
        try:
            options = _options(r["options"], where)
            rows.append(
                SourceRow(
                    r["question"].strip(),
                    options,
                    _country(r["country"], where),
                    _values(r["distribution"], len(options), where),
                )
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{where}: not a {{country, question, options, distribution}} row: {e!r}") from e
    return rows


def prompt_question(prompt: str, options: tuple[str, ...]) -> str:
    """The question text inside a modular_pluralism prompt "Question: <text>\\nOptions: A. .. B. ..\\nAnswer:"."""
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be a string, got {type(prompt).__name__}")
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options: more than the {len(LETTERS)} letters a prompt can list")
    head, sep, rest = prompt.rpartition("\nOptions: ")
    if not sep or not head.startswith("Question: ") or not rest.endswith("\nAnswer:"):
        raise ValueError(f"not a 'Question: ...\\nOptions: ...\\nAnswer:' prompt: {prompt[:80]!r}")
    listed = rest.removesuffix("\nAnswer:")
    expected = " ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    if " ".join(listed.split()) != " ".join(expected.split()):
        raise ValueError(f"the prompt lists {listed!r}, not the options {list(options)}")
    return head.removeprefix("Question: ").strip()


def read_pluralism_rows(path: str | os.PathLike[str]) -> list[SourceRow]:
    """Rows of the modular_pluralism layout: `{question: <prompt>, options, attribute, gold_distribution}`."""
    path = Path(path)
    rows = []
    for i, r in enumerate(_load_list(path)):
        where = f"{path}, item {i}"
        try:
            options = _options(r["options"], where)
            prompt = r["question"]
            country = _country(r["attribute"], where)
            values = _values(r["gold_distribution"], len(options), where)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{where}: not a {{question, options, attribute, gold_distribution}} row: {e!r}") from e
        try:
            text = prompt_question(prompt, options)
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{where}: {e}") from None
        rows.append(SourceRow(text, options, country, values))
    return rows


def question_id(text: str, options: tuple[str, ...]) -> str:
    """Stable id of a question: a hash of its text and its original (stripped) options."""
    digest = hashlib.sha256(json.dumps([text, list(options)], ensure_ascii=False).encode()).hexdigest()
    return f"GOQA_{digest[:12]}"


@dataclass(frozen=True)
class GoqaImportNotes:
    """What the import read, merged and dropped (PROVENANCE.md reports these)."""

    rows_per_file: tuple[int, int]
    rows_in_both: int
    disagreements: tuple[tuple[str, str, float], ...]  # (country, question id, largest difference)
    merged_rows: int
    merged_questions: int
    dropped_options: tuple[tuple[str, int, int], ...]  # (option text, questions, rows), most rows first
    few_options_questions: int  # fewer than MIN_OPTIONS substantive options: the whole question dropped
    few_options_rows: int
    zero_sum_rows: int  # the whole distribution sums to 0 (dropped)
    zero_substantive_rows: int  # positive sum, but all of it on non-substantive options (dropped)
    unanswered_questions: int  # questions left without any row after the drops

    def lines(self) -> list[str]:
        """Human-readable account of the merge and the drops (what `gpo import globalopinionqa` prints)."""
        a, b = self.rows_per_file
        out = [
            f"read {a} + {b} rows; {self.rows_in_both} (question, country) rows in both files, "
            f"{len(self.disagreements)} disagree after renormalising (tolerance {AGREE_TOLERANCE:g}; first file kept)",
            f"merged: {self.merged_rows} rows, {self.merged_questions} questions",
            f"non-substantive options dropped: {len(self.dropped_options)} texts, "
            f"{sum(q for _, q, _ in self.dropped_options)} question options, "
            f"{sum(r for _, _, r in self.dropped_options)} row values",
        ]
        out += [f"  {text!r}: {q} questions, {r} rows" for text, q, r in self.dropped_options]
        out += [
            f"dropped: {self.few_options_questions} questions with < {MIN_OPTIONS} substantive options "
            f"({self.few_options_rows} rows), {self.zero_sum_rows} rows summing to 0, "
            f"{self.zero_substantive_rows} rows with only non-substantive answers, "
            f"{self.unanswered_questions} questions left unanswered",
        ]
        out += [f"  disagreement: {c}, {q}: {d:.3g}" for c, q, d in self.disagreements]
        return out


Merged = tuple[
    dict[tuple[str, str], SourceRow],  # (question id, country) -> the row kept
    dict[str, tuple[str, tuple[str, ...]]],  # question id -> (text, original options)
    int,  # rows present in both lists
    list[tuple[str, str, float]],  # (country, question id, largest renormalised difference) beyond tolerance
]


def merge_rows(first: list[SourceRow], second: list[SourceRow]) -> Merged:
    """Merge two row lists on (question id, country), keeping the first list's row where both have one."""
    rows: dict[tuple[str, str], SourceRow] = {}
    questions: dict[str, tuple[str, tuple[str, ...]]] = {}
    in_both, disagreements = 0, []
    for source_no, source in enumerate((first, second)):
        seen: set[tuple[str, str]] = set()
        for r in source:
            qid = question_id(r.text, r.options)
            if questions.setdefault(qid, (r.text, r.options)) != (r.text, r.options):
                raise ValueError(f"question id collision: {qid} for two different questions")
            key = (qid, r.country)
            if key in seen:
                raise ValueError(f"source {source_no + 1}: two rows for country {r.country!r}, question {qid}")
            seen.add(key)
            if key in rows:
                in_both += 1
                diff = _renormalised_gap(rows[key].values, r.values)
                if diff > AGREE_TOLERANCE:
                    disagreements.append((r.country, qid, diff))
                continue
            rows[key] = r
    return rows, questions, in_both, disagreements


def _renormalised_gap(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = float(a.sum()), float(b.sum())
    if sa == 0 or sb == 0:
        return 0.0 if sa == sb else float("inf")
    return float(np.abs(a / sa - b / sb).max())


def import_globalopinionqa_with_notes(root: str | os.PathLike[str]) -> tuple[PreferenceDataset, GoqaImportNotes]:
    """Build the dataset from a folder holding both source files (see the module docstring)."""
    root = Path(root)
    first, second = read_bench_rows(root / BENCH_FILE), read_pluralism_rows(root / PLURALISM_FILE)
    rows, sources, in_both, disagreements = merge_rows(first, second)

    keep: dict[str, np.ndarray] = {}  # qid -> indices of its substantive options
    option_questions: Counter[str] = Counter()
    option_rows: Counter[str] = Counter()
    rows_per_question = Counter(qid for qid, _ in rows)
    few_q = few_rows = 0
    for qid, (_, options) in sources.items():
        dropped = [o for o in options if is_non_substantive(o)]
        option_questions.update(dropped)
        option_rows.update({o: rows_per_question[qid] for o in dropped})
        kept = np.array([i for i, o in enumerate(options) if not is_non_substantive(o)], dtype=np.int64)
        if len(kept) < MIN_OPTIONS:
            few_q += 1
            few_rows += rows_per_question[qid]
        else:
            keep[qid] = kept

    dists: dict[str, dict[str, np.ndarray]] = {}
    zero_sum = zero_substantive = 0
    for (qid, country), r in rows.items():  # insertion order: first file, then second
        if qid not in keep:
            continue
        if r.values.sum() <= 0:
            zero_sum += 1
            continue
        v = r.values[keep[qid]]
        if v.sum() <= 0:
            zero_substantive += 1
            continue
        dists.setdefault(country, {})[qid] = v / v.sum()

    groups = sorted(dists, key=lambda g: (g.casefold(), g))
    order: dict[str, None] = {}
    for g in groups:
        for qid in dists[g]:
            order.setdefault(qid, None)
    questions = []
    for qid in order:
        text, options = sources[qid]
        questions.append(Question(qid=qid, text=text, options=tuple(options[i] for i in keep[qid])))
    dataset = PreferenceDataset(
        questions=questions,
        groups=groups,
        dists={g: {q.qid: dists[g][q.qid] for q in questions if q.qid in dists[g]} for g in groups},
        group_attributes=dict.fromkeys(groups, ATTRIBUTE),
    )
    notes = GoqaImportNotes(
        rows_per_file=(len(first), len(second)),
        rows_in_both=in_both,
        disagreements=tuple(disagreements),
        merged_rows=len(rows),
        merged_questions=len(sources),
        dropped_options=tuple(
            (o, option_questions[o], option_rows[o]) for o in sorted(option_rows, key=lambda o: (-option_rows[o], o))
        ),
        few_options_questions=few_q,
        few_options_rows=few_rows,
        zero_sum_rows=zero_sum,
        zero_substantive_rows=zero_substantive,
        unanswered_questions=len(keep) - len(questions),
    )
    for line in notes.lines():
        log.info("%s", line)
    return dataset, notes


def import_globalopinionqa(root: str | os.PathLike[str]) -> PreferenceDataset:
    """The merged GlobalOpinionQA dataset from a folder holding both source files."""
    return import_globalopinionqa_with_notes(root)[0]


def summary_lines(dataset: PreferenceDataset, min_questions: int = 50) -> list[str]:
    """Groups, questions, rows, questions per group, groups with >= min_questions, most questions two groups share."""
    if not dataset.groups or not dataset.questions:
        return [f"{len(dataset.groups)} groups, {len(dataset.questions)} questions, 0 rows"]
    answered = np.array([[dataset.has(g, q.qid) for q in dataset.questions] for g in dataset.groups])
    per_group = answered.sum(axis=1)  # [G]
    shared = answered.astype(np.int64) @ answered.T.astype(np.int64)  # [G, G]
    np.fill_diagonal(shared, -1)
    i, j = np.unravel_index(int(np.argmax(shared)), shared.shape) if len(per_group) > 1 else (0, 0)
    per_question = answered.sum(axis=0)
    out = [
        f"{len(dataset.groups)} groups, {len(dataset.questions)} questions, {int(answered.sum())} rows",
        f"questions per group: min {per_group.min()}, median {float(np.median(per_group)):g}, max {per_group.max()}",
        f"groups per question: min {per_question.min()}, median {float(np.median(per_question)):g}, "
        f"max {per_question.max()}",
        f"groups with >= {min_questions} questions: {int((per_group >= min_questions).sum())}",
    ]
    if len(per_group) > 1:
        out.append(
            f"most questions shared by two groups: {int(shared[i, j])} "
            f"({dataset.groups[i]!r} and {dataset.groups[j]!r})"
        )
    counts = Counter(q.n_options for q in dataset.questions)
    out.append("options per question: " + ", ".join(f"{n}: {counts[n]}" for n in sorted(counts)))
    return out


def import_globalopinionqa_to(
    root: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> tuple[PreferenceDataset, GoqaImportNotes]:
    """Import `root` and write it atomically as JSONL(.gz) to `out_path`; `gpo import globalopinionqa` runs this."""
    dataset, notes = import_globalopinionqa_with_notes(root)
    write_jsonl(dataset, out_path)
    log.info("wrote %s", out_path)
    return dataset, notes


def shipped_globalopinionqa_path() -> Path:
    """Path of the processed GlobalOpinionQA file shipped inside the `service.data` package."""
    return Path(str(resources.files("service.data").joinpath(*SHIPPED_FILE)))


def load_globalopinionqa() -> PreferenceDataset:
    """The shipped GlobalOpinionQA dataset: countries as groups, ragged (service/data/globalopinionqa/PROVENANCE.md)."""
    ref = resources.files("service.data").joinpath(*SHIPPED_FILE)
    with resources.as_file(ref) as path:
        return read_jsonl(path)


def main(argv: list[str] | None = None) -> None:
    """`python -m service.training.globalopinionqa ROOT OUT`: regenerate the processed file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help=f"folder holding {BENCH_FILE} and {PLURALISM_FILE}")
    parser.add_argument("out", help="output .jsonl or .jsonl.gz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dataset, _ = import_globalopinionqa_to(args.root, args.out)
    for line in summary_lines(dataset):
        log.info("%s", line)


if __name__ == "__main__":
    main()
