"""What a results page says about its data: a small description computed from the dataset itself.

`gpo eval` and `gpo eval-individuals` store it in the meta beside their records (`meta["data"]`), so
`gpo report` rebuilds the page from saved records alone. Records saved before the description existed
have none: the pages then describe the shipped data, computed from the shipped files
(`shipped_group_description`, `shipped_ratings_description`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from service.training.datasets import PreferenceDataset
from service.training.ratings import RatingsDataset

# a prompt's short form, as the results page has always quoted the shipped NYT books prompt
SHORT_WORDING = {"How likely would you be to read this book?": "how likely would you read it"}


def _shipped_names() -> dict[Path, tuple[str, str, str]]:
    """Shipped file -> (name on the page, where it lives, what one item is called)."""
    from service.training.globalopinionqa import shipped_globalopinionqa_path
    from service.training.nytbooks import shipped_nytbooks_path
    from service.training.opinionqa import shipped_opinionqa_path

    return {
        shipped_opinionqa_path().resolve(): ("OpinionQA", "service/data/opinionqa/", "question"),
        shipped_globalopinionqa_path().resolve(): ("GlobalOpinionQA", "service/data/globalopinionqa/", "question"),
        shipped_nytbooks_path().resolve(): ("NYT books", "service/data/nytbooks/", "book"),
    }


def name_of(path: Path) -> tuple[str, str, str, bool]:
    """(name, source, item noun, shipped) of the data file `path`: a shipped file's own name, else the file name
    without its .jsonl/.gz suffixes."""
    known = _shipped_names().get(Path(path).resolve())
    if known is not None:
        return (*known, True)
    stem = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        stem = stem.removesuffix(suffix)
    return stem, Path(path).name, "item", False


def describe_groups(ds: PreferenceDataset, path: Path) -> dict:
    """Name, counts and metric(s) of a group dataset read from `path`: groups, questions, the scorable ones (those
    `question_alignments` scores: non-ordinal, or ordinal with a spread), how many of those are ordinal
    (Wasserstein) and non-ordinal (Jensen-Shannon), and whether it is ragged (answers < groups x questions)."""
    from service.training.splits import scorable_question_ids

    name, source, _, shipped = name_of(path)
    scorable = set(scorable_question_ids(ds))
    ordinal = sum(1 for q in ds.questions if q.qid in scorable and q.is_ordinal)
    answers = sum(1 for g in ds.groups for q in ds.questions if ds.has(g, q.qid))
    cells = len(ds.groups) * len(ds.questions)
    return {
        "kind": "groups",
        "name": name,
        "source": source,
        "shipped": shipped,
        "groups": len(ds.groups),
        "questions": len(ds.questions),
        "scorable": len(scorable),
        "ordinal": ordinal,
        "non_ordinal": len(scorable) - ordinal,
        "answers": answers,
        "ragged": answers < cells,
    }


def describe_ratings(ds: RatingsDataset, path: Path) -> dict:
    """Name, counts and scale of a per-person ratings dataset read from `path`: people, items, ratings per person
    (fewest, most), the scale, the prompt (the question every item answers; "" when the file has none), and the
    number of scale levels that exact accuracy reads a rating as a choice among."""
    name, source, noun, shipped = name_of(path)
    per_person = [len(ds.scores.get(p, {})) for p in ds.people]
    lo, hi = (float(v) for v in ds.scale)
    return {
        "kind": "ratings",
        "name": name,
        "source": source,
        "shipped": shipped,
        "item_noun": noun,
        "people": len(ds.people),
        "items": len(ds.items),
        "ratings": ds.n_ratings(),
        "per_person": [min(per_person, default=0), max(per_person, default=0)],
        "scale": [lo, hi],
        "prompt": ds.prompt,
        "wording": SHORT_WORDING.get(ds.prompt, ds.prompt),
        "levels": len(np.arange(lo, hi + 1)),  # the levels of individuals/evaluate.py's exact accuracy
    }


def shipped_group_description() -> dict:
    """The description of the shipped OpinionQA file (what records without one were made from)."""
    return dict(_shipped_description("groups"))


def shipped_ratings_description() -> dict:
    """The description of the shipped NYT books ratings (what records without one were made from)."""
    return dict(_shipped_description("ratings"))


@functools.cache
def _shipped_description(kind: str) -> dict:
    """Read each shipped file once per process (a copy goes to each caller)."""
    if kind == "groups":
        from service.training.opinionqa import load_opinionqa, shipped_opinionqa_path

        return describe_groups(load_opinionqa(), shipped_opinionqa_path())
    from service.training.nytbooks import load_nytbooks, shipped_nytbooks_path

    return describe_ratings(load_nytbooks(), shipped_nytbooks_path())


def number(x: float) -> str:
    """A scale end as the page writes it: 1.0 -> "1", 2.5 -> "2.5"."""
    return f"{x:g}"
