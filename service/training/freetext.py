"""Free-text responses: the free-text protocol of `/generate` (issue 16).

`/generate` samples responses to a prompt and ranks them for a group as the options of one new question: the
response vectors are the ones the worker pools while sampling (the chat-templated prompt and the response,
`RESPONSE_POOLED_TEMPLATE_VERSION`), and the group's predicted distribution over them is the ranking. The protocol
asks whether that ranking is the group's and not just the population's: the held-out questions of the
new-questions protocol that have first-person versions of their options (service/data/freetext, one sentence per
option, same order and meaning) are scored for each test group as `/generate` scores samples, and on the
questions where the group's most chosen answer differs from the population's (the training groups' mean answer)
the top pick is counted as the group's answer, the population's, or another. The difference of the first two shares
gets a bootstrap interval over questions (a question is the unit that repeats across groups).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from service.embedder.embed import last_hidden_state
from service.embedder.generate import chat_prompt_ids
from service.embedder.pooling import pool
from service.training.datasets import PreferenceDataset, Question

SHIPPED_FIRST_PERSON = Path(__file__).resolve().parent.parent / "data" / "freetext" / "opinionqa_first_person.jsonl"
SUFFIX = "~freetext"
OUTCOMES = ("group", "population", "other")


def load_first_person(path: Path, dataset: PreferenceDataset) -> list[tuple[str, Question]]:
    """(original qid, question whose options are the first-person responses) for each line whose qid is in
    `dataset`; the new question's id is the original's plus SUFFIX, it keeps the text, ordinals and tags. Raises
    ValueError on a line whose response count differs from its original's option count."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            original = dataset.question(row["qid"])
        except KeyError:
            continue
        responses = tuple(str(r) for r in row["responses"])
        if len(responses) != original.n_options:
            raise ValueError(f"{path}:{n}: {row['qid']} has {original.n_options} options, {len(responses)} responses")
        out.append((original.qid, replace(original, qid=original.qid + SUFFIX, options=responses)))
    return out


@torch.inference_mode()
def generate_vectors(
    lm, prompt: str, responses: Sequence[str], pooling: str = "mean", use_chat_template: bool | None = None
) -> np.ndarray:
    """[n, D] the vectors `/generate` scores these responses with: the final hidden states of the chat-templated
    prompt followed by each response's tokens, pooled (what the worker pools while sampling a response that ends
    with an end token)."""
    prompt_ids = chat_prompt_ids(lm, prompt, use_chat_template)[0].tolist()
    tok = lm.tokenizer
    out = []
    for r in responses:
        ids = prompt_ids + tok(r.strip(), add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([ids], dtype=torch.long, device=lm.device)
        mask = torch.ones_like(input_ids)
        hidden = last_hidden_state(lm, input_ids, mask)
        out.append(pool(hidden.float(), mask, pooling).cpu().numpy()[0])
    return np.stack(out).astype(np.float32)


def population_top(dataset: PreferenceDataset, groups: Sequence[str], qid: str) -> int | None:
    """The option the given groups' mean answer puts first (None when none of them answered the question)."""
    dists = [dataset.dist(g, qid) for g in groups if dataset.has(g, qid)]
    return int(np.argmax(np.mean(dists, axis=0))) if dists else None


def top_picks(
    dataset: PreferenceDataset,
    population_groups: Sequence[str],
    preds: dict[str, dict[str, np.ndarray]],
    qid_of: dict[str, str],
) -> list[dict]:
    """Per (group, scored question) where the group's most chosen answer differs from the population's: the
    predicted top pick's outcome ("group", "population" or "other"). `preds[g][scored qid]` is the predicted
    distribution, `qid_of[scored qid]` the original question whose answers are the truth."""
    rows = []
    for g, by_q in preds.items():
        for sq, dist in by_q.items():
            q = qid_of[sq]
            pop = population_top(dataset, population_groups, q)
            if pop is None or not dataset.has(g, q):
                continue
            truth = dataset.dist(g, q)
            own = int(np.argmax(truth))
            if own == pop or np.sort(truth)[-2] == truth[own]:  # agreement, or a tie for the group's first place
                continue
            pick = int(np.argmax(dist))
            outcome = "group" if pick == own else "population" if pick == pop else "other"
            rows.append(
                {"group": g, "qid": q, "group_top": own, "population_top": pop, "pick": pick, "outcome": outcome}
            )
    return rows


def pick_summary(rows: Sequence[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Shares of the outcomes and the difference group - population with a 95% bootstrap interval (questions
    resampled with replacement, each with all its groups' rows)."""
    if not rows:
        return {"n": 0}
    qids = sorted({r["qid"] for r in rows})
    per_q = {q: np.zeros(len(OUTCOMES)) for q in qids}
    for r in rows:
        per_q[r["qid"]][OUTCOMES.index(r["outcome"])] += 1
    counts = np.stack([per_q[q] for q in qids])  # [Q, 3]
    total = counts.sum(axis=0)
    share = total / total.sum()
    rng = np.random.default_rng(seed)
    boot = counts[rng.integers(0, len(qids), size=(n_boot, len(qids)))].sum(axis=1)  # [n_boot, 3]
    diff = (boot[:, 0] - boot[:, 1]) / boot.sum(axis=1)
    lo, hi = np.quantile(diff, [0.025, 0.975])
    return {
        "n": int(total.sum()),
        "n_questions": len(qids),
        **{f"share_{o}": round(float(s), 4) for o, s in zip(OUTCOMES, share, strict=True)},
        "group_minus_population": round(float(share[0] - share[1]), 4),
        "ci95": [round(float(lo), 4), round(float(hi), 4)],
    }
