"""OpinionQA importer: the Pew ATP group answer counts (`human_resp/` folders) -> a PreferenceDataset.

Processing, identical to the reference script `oqa_baselines.py` so numbers are comparable:
- groups: the 17 groups of `GROUPS` (7 attributes), in that order; each keeps its attribute;
- options: the non-refusal options `references[:len(option_ordinal)]` of the wave's `info.csv`,
  ordinals = `option_ordinal`;
- counts: the group's count dict in `<ATTR>_data.json`, keys matched to option texts case-insensitively
  (this fixes "noR" vs "nor" in POLICY3_W42); refusal options are dropped and the rest normalised;
- a question is kept only when every one of the 17 groups has a positive count (684 questions);
  unlike the reference, questions whose ordinals are all equal are kept: the evaluation skips and
  counts them (`splits.scorable_question_ids` gives the reference's 680);
- questions are ordered by key (sorted, as the reference), which makes the split RNG draws identical;
- questions whose key is in `Pew_American_Trends_Panel_disagreement_500/info.csv` are tagged
  "contentious" (the paper's 500 contentious questions).

The processed result ships as `service/data/opinionqa/opinionqa.jsonl.gz` (see PROVENANCE.md there);
`load_opinionqa()` reads it. Regenerate it with
`python -m service.training.opinionqa <human_resp> service/data/opinionqa/opinionqa.jsonl.gz`.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import logging
import os
from importlib import resources
from pathlib import Path

import numpy as np

from service.training.datasets import PreferenceDataset, Question
from service.training.jsonl import read_jsonl, write_jsonl

log = logging.getLogger(__name__)

# attribute -> groups, exactly as oqa_baselines.py (order matters: the split permutes this list).
GROUPS: dict[str, list[str]] = {
    "CREGION": ["Northeast", "South"],
    "EDUCATION": ["College graduate/some postgrad", "Less than high school"],
    "SEX": ["Male", "Female"],
    "POLIDEOLOGY": ["Liberal", "Conservative", "Moderate"],
    "INCOME": ["$100,000 or more", "Less than $30,000"],
    "POLPARTY": ["Democrat", "Republican"],
    "RACE": ["Black", "White", "Asian", "Hispanic"],
}
CONTENTIOUS_TAG = "contentious"
CONTENTIOUS_FOLDER = "Pew_American_Trends_Panel_disagreement_500"
WAVE_GLOB = "American_Trends_Panel_W*"
SHIPPED_FILE = ("opinionqa", "opinionqa.jsonl.gz")  # under the service.data package


def import_opinionqa(root: str | os.PathLike[str]) -> PreferenceDataset:
    """Build the dataset from an OpinionQA `human_resp/` folder; `group_attributes` is set on it."""
    root = Path(root)
    waves = sorted(p for p in root.glob(WAVE_GLOB) if p.is_dir())
    if not waves:
        raise FileNotFoundError(f"{root}: no {WAVE_GLOB} folders (expected an OpinionQA human_resp/ folder)")

    info: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {}  # qkey -> (text, options, ordinals)
    for wave in waves:
        for key, entry in _read_info(wave / "info.csv").items():
            if key in info and info[key] != entry:
                raise ValueError(f"{wave / 'info.csv'}: question {key} differs from another wave's entry")
            info[key] = entry

    groups = [g for gs in GROUPS.values() for g in gs]
    counts: dict[str, dict[str, np.ndarray]] = {g: {} for g in groups}  # group -> qkey -> [n_options]
    for wave in waves:
        for attr, attr_groups in GROUPS.items():
            path = wave / f"{attr}_data.json"
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            for key, rec in data.items():
                if key not in info:
                    continue
                _, options, _ = info[key]
                for g in attr_groups:
                    low = {k.lower(): float(v) for k, v in rec.get(g, {}).items()}
                    v = np.array([low.get(o.lower(), 0.0) for o in options], dtype=np.float64)
                    if v.sum() > 0:
                        counts[g][key] = v

    keys = sorted(k for k in info if all(k in counts[g] for g in groups))
    contentious = _read_contentious(root / CONTENTIOUS_FOLDER / "info.csv")
    questions = []
    for k in keys:
        text, options, ordinals = info[k]
        tags = frozenset({CONTENTIOUS_TAG}) if k in contentious else frozenset()
        questions.append(Question(qid=k, text=text, options=options, ordinals=ordinals, tags=tags))
    dists = {g: {k: counts[g][k] / counts[g][k].sum() for k in keys} for g in groups}
    attributes = {g: attr for attr, gs in GROUPS.items() for g in gs}
    log.info(
        "OpinionQA: %d groups, %d questions (%d contentious) from %d waves",
        len(groups),
        len(questions),
        sum(CONTENTIOUS_TAG in q.tags for q in questions),
        len(waves),
    )
    return PreferenceDataset(questions=questions, groups=groups, dists=dists, group_attributes=attributes)


def _read_info(path: Path) -> dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]]:
    """qkey -> (question text, non-refusal options, their ordinals) from one wave's info.csv."""
    out = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f), start=2):  # line 1 is the header
            try:
                refs = ast.literal_eval(row["references"])
                ords = ast.literal_eval(row["option_ordinal"])
            except (KeyError, ValueError, SyntaxError) as e:
                raise ValueError(f"{path}, row {row_no}: cannot read references/option_ordinal: {e}") from e
            if len(ords) > len(refs) or not ords:
                raise ValueError(f"{path}, row {row_no}: {len(ords)} ordinals for {len(refs)} references")
            options = tuple(str(r) for r in refs[: len(ords)])
            if len({o.lower() for o in options}) != len(options):
                # counts are matched case-insensitively: two options equal up to case would share one count
                raise ValueError(f"{path}, row {row_no}: options equal up to case: {options}")
            out[row["key"]] = (row["question"], options, tuple(float(x) for x in ords))
    return out


def _read_contentious(path: Path) -> set[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return {row["key"] for row in csv.DictReader(f)}


def import_opinionqa_to(root: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> PreferenceDataset:
    """Import `root` (an OpinionQA human_resp/ folder) and write it atomically as JSONL(.gz) to `out_path`.

    This is what `gpo import opinionqa` runs. Returns the imported dataset.
    """
    dataset = import_opinionqa(root)
    write_jsonl(dataset, out_path)
    log.info("wrote %s", out_path)
    return dataset


def shipped_opinionqa_path() -> Path:
    """Path of the processed OpinionQA file shipped inside the `service.data` package."""
    ref = resources.files("service.data").joinpath(*SHIPPED_FILE)
    return Path(str(ref))


def load_opinionqa() -> PreferenceDataset:
    """The shipped OpinionQA dataset: 17 groups, 684 questions (see service/data/opinionqa/PROVENANCE.md)."""
    ref = resources.files("service.data").joinpath(*SHIPPED_FILE)
    with resources.as_file(ref) as path:
        return read_jsonl(path)


def main(argv: list[str] | None = None) -> None:
    """`python -m service.training.opinionqa ROOT OUT`: regenerate the processed file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="OpinionQA human_resp/ folder")
    parser.add_argument("out", help="output .jsonl or .jsonl.gz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import_opinionqa_to(args.root, args.out)


if __name__ == "__main__":
    main()
