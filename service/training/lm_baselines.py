"""LLM baselines of the GPO paper: LM base, LM steered (QA / BIO / PORTRAY) and few-shot prompting.

Every method turns (group, target question) into one prompt ending with "Answer:" and predicts the
base LLM's next-token probabilities of the option letters, renormalised over the question's options
(float64, summing to 1): the same `{qid: distribution}` per test group as `baselines.predict_many`.

Methods (`predict_lm_many(method, ...)`; prompt version `LM_PROMPT_VERSION`):
- `lm_base`: `format_question_prompt(question, options)` (the embedding template up to "Answer:",
  as OpinionQA and the GPO research code score it). The same prediction for every group.
- `lm_qa`, `lm_bio`, `lm_portray`: a steering text about the group, a blank line, then the lm_base
  prompt. Following OpinionQA (Santurkar et al. 2023), built from the group's attribute
  (`dataset.group_attributes`) and its value (the group name), with the phrasings of `STEERING`:
    QA:       "Question: In politics today, do you consider yourself a Democrat, Republican, Independent
               or something else?\\nAnswer: Democrat"
    BIO:      "Below you will be asked to provide a short description of your political affiliation and
               then answer some questions.\\nDescription: In politics today, I consider myself a Democrat."
    PORTRAY:  "Answer the following question as if in politics today, you considered yourself a Democrat."
  A group whose attribute is not in `STEERING` (or has none) gets `GENERIC_STEERING`
  ("... as if you belong to the group '<name>'"), so any dataset works.
- `few_shot`: `FEW_SHOT_HEADER`, then each context question (in the context mapping's order) as
  "Question: <text>\\nA. <option>\\n...\\nAnswer distribution: A: 45%, B: 30%, ..." with the group's
  distribution (whole percents), a blank line, then the lm_base prompt of the target. Needs one context
  per group; the caller keeps targets out of the context (as the evaluation split does).

Cost. The prompts of one group (and context) share their beginning: the steering text or the whole
few-shot block, and for every method the instruction line. `shared_prefix_letter_probs` tokenizes the
full prompts, runs their longest common token prefix once, keeps its key/value cache and runs the
remaining tokens of each prompt in right-padded batches on top of it (the cache repeated along the
batch dimension, rows capped by `max_cache_bytes`). A prompt's result equals a plain forward of its
full text (up to float rounding, ~1e-6 in fp32) and does not depend on its batch.
Results are stored on disk (`LMPredictionCache`, sqlite under `settings.cache_dir / "lm_baselines"`),
keyed by the LLM's identity (model id @ revision), its dtype, `LM_PROMPT_VERSION` and the full prompt:
a rerun is instant, and lm_base / steered predictions (which depend on neither the split nor the seed)
are computed once per (group, question) for all splits and seeds.

Evaluating on a subset. On one CPU thread SmolLM2-135M takes ~140 ms per lm_base / steered prompt and
~400 ms per few-shot prompt (20 context questions make a ~1,450-token prefix: its forward is ~4 s, and every
target token still attends to it), so the full protocol (17 groups x ~680 questions x 3 steering styles,
plus few-shot per test group, split and seed) takes hours.
`lm_eval_questions(dataset, n, seed)` is a fixed random subset of the scorable questions (the same for
every split and seed); score the LLM baselines, and GPO and the other baselines beside them, on
`[q for q in split.target_qids if q in subset]` for a fair side-by-side, and report n.
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from service.embedder.array_store import ArrayStore
from service.embedder.generate import option_letter_token_ids
from service.embedder.loading import BaseLM, LMIdentity
from service.embedder.prompts import TEMPLATE_VERSION, format_question_prompt, option_letter
from service.progress import progress_bar
from service.training.datasets import PreferenceDataset, Question
from service.training.splits import scorable_question_ids

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

# Part of every cache key: change a template, the steering table or the scoring, bump it.
LM_PROMPT_VERSION = f"lm-baselines-v1+{TEMPLATE_VERSION}"
LM_METHODS = ("lm_base", "lm_qa", "lm_bio", "lm_portray", "few_shot")
STEERING_STYLES = {"lm_qa": "qa", "lm_bio": "bio", "lm_portray": "portray"}
DEFAULT_MAX_CACHE_BYTES = 512 << 20  # key/value cache of one batch: bounds the rows on top of a long prefix
_EVAL_STREAM = 0x4C4D  # "LM": mixed into lm_eval_questions' seed, so it never replays the split's draws


# ------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class Steering:
    """How one attribute is described. `{value}` is the group name (lower-cased inside sentences when
    `lower_value`, for common nouns such as "Liberal" or "Less than $30,000")."""

    question: str  # QA: the survey question whose answer is the group name
    topic: str  # BIO: "a short description of your <topic>"
    first_person: str  # BIO: the description, e.g. "In politics today, I consider myself a {value}."
    clause: str  # PORTRAY: "as if <clause>."
    lower_value: bool = False


# OpinionQA's attributes (the Pew ATP demographic questions), phrased after its steering prompts.
STEERING: dict[str, Steering] = {
    "CREGION": Steering(
        "Which part of the United States do you currently live in?",
        "region of residence",
        "I currently live in the {value}.",
        "you lived in the {value} of the United States",
    ),
    "EDUCATION": Steering(
        "What is the highest level of schooling or degree that you have completed?",
        "educational background",
        "The highest level of education I have completed is: {value}.",
        "the highest level of education you had completed was: {value}",
        lower_value=True,
    ),
    "SEX": Steering("What is your sex?", "sex", "I am {value}.", "you were {value}", lower_value=True),
    "POLIDEOLOGY": Steering(
        "In general, would you describe your political views as liberal, conservative or moderate?",
        "political ideology",
        "In general, I would describe my political views as {value}.",
        "in general, you would describe your political views as {value}",
        lower_value=True,
    ),
    "INCOME": Steering(
        "Last year, what was your total family income from all sources, before taxes?",
        "family income",
        "Last year, my total family income from all sources, before taxes, was {value}.",
        "last year, your total family income from all sources, before taxes, was {value}",
        lower_value=True,
    ),
    "POLPARTY": Steering(
        "In politics today, do you consider yourself a Democrat, Republican, Independent or something else?",
        "political affiliation",
        "In politics today, I consider myself a {value}.",
        "in politics today, you considered yourself a {value}",
    ),
    "RACE": Steering(
        "What is your race or ethnicity?",
        "race or ethnicity",
        "In terms of race or ethnicity, I am {value}.",
        "your race or ethnicity was {value}",
    ),
}
GENERIC_STEERING = Steering(
    "Which group do you belong to?",
    "group",
    "I belong to the group '{value}'.",
    "you belong to the group '{value}'",
)
FEW_SHOT_HEADER = (
    "Below are survey questions, each followed by the distribution of answers given by one group of people. "
    "Answer the last question as a member of this group would."
)


def steering_text(style: str, group: str, attribute: str | None) -> str:
    """The text put before the question to describe `group` (value) of `attribute` in one style.

    `style` is "qa", "bio" or "portray"; an attribute missing from `STEERING` gets `GENERIC_STEERING`.
    """
    s = STEERING.get(attribute or "", GENERIC_STEERING)
    # QA answers with the group name as the survey lists it; sentences read better with common nouns lowered.
    in_sentence = group.lower() if s.lower_value else group
    if style == "qa":
        return f"Question: {s.question}\nAnswer: {group}"
    if style == "bio":
        return (
            f"Below you will be asked to provide a short description of your {s.topic} and then answer some "
            f"questions.\nDescription: {s.first_person.format(value=in_sentence)}"
        )
    if style == "portray":
        return f"Answer the following question as if {s.clause.format(value=in_sentence)}."
    raise ValueError(f"unknown steering style {style!r}; known: qa, bio, portray")


def _percent_list(dist: np.ndarray) -> str:
    return ", ".join(f"{option_letter(i)}: {round(100 * float(p))}%" for i, p in enumerate(dist))


def few_shot_block(dataset: PreferenceDataset, context: Mapping[str, ArrayLike]) -> str:
    """The few-shot prefix: the header, then each context question with the group's answer distribution."""
    items = [FEW_SHOT_HEADER]
    for qid, dist in context.items():
        q = dataset.question(qid)  # KeyError for a context question the dataset does not hold
        d = np.asarray(dist, dtype=np.float64)
        if d.shape != (q.n_options,):
            raise ValueError(f"context {qid!r}: distribution of shape {d.shape} for {q.n_options} options")
        lines = [f"Question: {q.text.strip()}"]
        lines += [f"{option_letter(i)}. {o.strip()}" for i, o in enumerate(q.options)]
        lines.append(f"Answer distribution: {_percent_list(d)}")
        items.append("\n".join(lines))
    return "\n\n".join(items)


def _check_method(method: str) -> None:
    if method not in LM_METHODS:
        raise ValueError(f"unknown LLM baseline {method!r}; known: {', '.join(LM_METHODS)}")


def group_prefix(
    method: str, dataset: PreferenceDataset, group: str, context: Mapping[str, ArrayLike] | None = None
) -> str:
    """What `method` puts before every target question of `group` ("" for lm_base)."""
    _check_method(method)
    if method == "lm_base":
        return ""
    if method == "few_shot":
        if context is None:
            raise ValueError("few_shot needs the group's context answers")
        return few_shot_block(dataset, context)
    return steering_text(STEERING_STYLES[method], group, dataset.group_attributes.get(group))


def lm_prompt(prefix: str, question: Question) -> str:
    """The full prompt: the group prefix (if any), a blank line, the question's lm_base prompt."""
    body = format_question_prompt(question.text, list(question.options))
    return f"{prefix}\n\n{body}" if prefix else body


# ------------------------------------------------------------------------------------------ scoring


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Longest common token prefix, leaving at least one token of every sequence to score."""
    limit = min(len(s) for s in seqs) - 1
    first = seqs[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


def _cache_kwarg(model: torch.nn.Module) -> str:
    # transformers renamed `past_key_values` to `cache` during 5.x; accept both.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_bytes(cache: Any) -> int:
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def shared_prefix_letter_probs(
    lm: BaseLM,
    prompts: Sequence[str],
    n_options: Sequence[int],
    *,
    batch_size: int = 16,
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
    bar: tqdm | None = None,
) -> list[np.ndarray]:
    """Option-letter probabilities after each prompt (as `generate.option_letter_probs`), running the
    prompts' longest common token prefix only once.

    The prefix's key/value cache is computed once and repeated along the batch for each batch of
    suffixes (right-padded: real tokens never see the padding that follows them, so positions are
    prefix length + 0, 1, ...). Logits are read at each row's last real token. A letter's probability
    is the sum over its spellings (" A", "A"), renormalised over the prompt's first n options.
    """
    from transformers import DynamicCache

    if len(prompts) != len(n_options):
        raise ValueError(f"{len(prompts)} prompts but {len(n_options)} option counts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    tok, model = lm.tokenizer, lm.model
    letter_ids = option_letter_token_ids(lm, max(n_options))
    ids: list[list[int]] = tok(list(prompts), add_special_tokens=True)["input_ids"]
    max_len = max(len(s) for s in ids)
    max_pos = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if max_pos is not None and max_len > max_pos:
        raise ValueError(f"a prompt has {max_len} tokens, more than the model's {max_pos} positions")
    P = _common_prefix_len(ids)
    params = inspect.signature(model.forward).parameters
    cache_kw = _cache_kwarg(model)
    keep_logits = "logits_to_keep" in params
    dev = lm.device

    results: list[np.ndarray | None] = [None] * len(prompts)
    with torch.inference_mode():
        prefix_cache = None
        rows = batch_size
        if P > 0:
            prefix_cache = DynamicCache(config=model.config)
            extra = {"logits_to_keep": 1} if keep_logits else {}
            model(
                input_ids=torch.tensor([ids[0][:P]], dtype=torch.long, device=dev),
                attention_mask=torch.ones((1, P), dtype=torch.long, device=dev),
                use_cache=True,
                **{cache_kw: prefix_cache},
                **extra,
            )
            # Each row holds its own copy of the prefix cache: bound the rows so a long few-shot
            # prefix cannot take gigabytes.
            rows = max(1, min(batch_size, max_cache_bytes // max(1, _cache_bytes(prefix_cache))))
        # Shortest first: rows of one batch have similar lengths, so little padding.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), rows):
            idx = order[start : start + rows]
            suffixes = [ids[i][P:] for i in idx]
            b, T = len(idx), max(len(s) for s in suffixes)
            input_ids = torch.full((b, T), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((b, P + T), dtype=torch.long)
            mask[:, :P] = 1
            for row, s in enumerate(suffixes):
                input_ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[row, P : P + len(s)] = 1
            position_ids = (P + torch.arange(T)).unsqueeze(0).expand(b, T)
            last = torch.tensor([len(s) - 1 for s in suffixes])  # [b] index of each row's last real token
            kwargs: dict[str, Any] = {}
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)  # the forward appends to it; keep the prefix intact
                cache.batch_repeat_interleave(b)
                kwargs = {cache_kw: cache, "use_cache": True}
            else:
                kwargs = {"use_cache": False}
            keep = torch.unique(last)  # sorted distinct positions: project only those onto the vocabulary
            if keep_logits:
                kwargs["logits_to_keep"] = keep.to(dev)
            logits = model(
                input_ids=input_ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=position_ids.to(dev),
                **kwargs,
            ).logits  # [b, len(keep) or T, V]
            col = torch.searchsorted(keep, last) if keep_logits else last
            logits = logits[torch.arange(b), col.to(logits.device)]  # [b, V]
            probs = torch.softmax(logits.float(), dim=-1)
            letter_p = torch.stack([probs[:, li].sum(dim=-1) for li in letter_ids], dim=1)  # [b, n_letters]
            letter_p = letter_p.double().cpu().numpy()
            for row, i in enumerate(idx):
                k = n_options[i]
                p = letter_p[row, :k]
                total = p.sum()
                results[i] = p / total if total > 0 else np.full(k, 1.0 / k)
            if bar is not None:
                bar.update(b)
    scored = [r for r in results if r is not None]
    assert len(scored) == len(prompts), "every prompt is scored in exactly one batch"
    return scored


# ------------------------------------------------------------------------------------------ disk cache


class LMPredictionCache(ArrayStore):
    """Option-letter distributions on disk in one sqlite3 file: (key TEXT PRIMARY KEY, n INTEGER, probs BLOB).

    `key(prefix, prompt)` = sha256(prefix + "\\x00" + prompt), where `key_prefix(lm)` names the weights,
    their dtype and `LM_PROMPT_VERSION`; the prompt lists the options, so it fixes their number.
    """

    FILENAME = "predictions.sqlite3"
    CACHE_SUBDIR = "lm_baselines"
    TABLE = "predictions"
    LENGTH_COLUMN = "n"
    BLOB_COLUMN = "probs"
    DTYPE = "<f8"

    @staticmethod
    def key_prefix(identity: LMIdentity, dtype: torch.dtype | str, load_in_8bit: bool = False) -> str:
        """What, besides the prompt, decides a prediction: the weights, their precision, the prompt version."""
        precision = f"{dtype}".removeprefix("torch.") + ("+int8" if load_in_8bit else "")
        return f"{identity.model_id}@{identity.revision}|{precision}|{LM_PROMPT_VERSION}"

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """Distributions (float64 copies: callers may change them) for `keys` in order, None where absent."""
        return [None if p is None else p.copy() for p in super().get_many(keys)]


# ------------------------------------------------------------------------------------------ baselines


def predict_lm_many(
    method: str,
    lm: BaseLM,
    dataset: PreferenceDataset,
    groups: Sequence[str],
    contexts: Sequence[Mapping[str, ArrayLike]] | None,
    targets: Sequence[str],
    *,
    batch_size: int = 16,
    cache: LMPredictionCache | None = None,
    progress: bool = False,
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
    targets_of: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, np.ndarray]]:
    """LLM baseline `method` for several groups: one {qid: distribution over the options} per group.

    `targets_of` (one list per group, each a subset of `targets`): predict only those questions for that group
    (ragged data: the questions it answered), not every target for every group.

    `contexts` (one per group, qid -> the group's distribution) is needed by few_shot only and ignored
    by the others. Identical prompts are scored once (lm_base: once for all groups); prompts found in
    `cache` are not scored at all, and new ones are stored there.
    """
    _check_method(method)
    if contexts is not None and len(contexts) != len(groups):
        raise ValueError(f"{len(contexts)} contexts for {len(groups)} groups")
    if method == "few_shot" and contexts is None:
        raise ValueError("few_shot needs one context per group")
    questions = [dataset.question(q) for q in targets]
    key_prefix = LMPredictionCache.key_prefix(lm.identity, lm.dtype, lm.load_in_8bit)
    memo: dict[str, np.ndarray] = {}  # prompt -> distribution, across the groups of this call
    out: list[dict[str, np.ndarray]] = []
    n_computed = 0
    t0 = time.perf_counter()
    with progress_bar(0, method, unit="prompt", enabled=progress) as bar:
        for gi, group in enumerate(groups):
            context = contexts[gi] if contexts is not None else None
            prefix = group_prefix(method, dataset, group, context)
            mine = set(targets_of[gi]) if targets_of is not None else None
            group_questions = questions if mine is None else [q for q in questions if q.qid in mine]
            prompts = [lm_prompt(prefix, q) for q in group_questions]
            todo = list(dict.fromkeys(p for p in prompts if p not in memo))
            if todo and cache is not None:
                keys = [LMPredictionCache.key(key_prefix, p) for p in todo]
                for p, hit in zip(todo, cache.get_many(keys), strict=True):
                    if hit is not None:
                        memo[p] = hit
                todo = [p for p in todo if p not in memo]
            if todo:
                n_opts = {p: q.n_options for p, q in zip(prompts, group_questions, strict=True)}
                bar.total += len(todo)
                bar.refresh()
                fresh = shared_prefix_letter_probs(
                    lm,
                    todo,
                    [n_opts[p] for p in todo],
                    batch_size=batch_size,
                    max_cache_bytes=max_cache_bytes,
                    bar=bar,
                )
                memo.update(zip(todo, fresh, strict=True))
                n_computed += len(todo)
                if cache is not None:
                    cache.put_many([LMPredictionCache.key(key_prefix, p) for p in todo], fresh)
            out.append({q.qid: memo[p].copy() for q, p in zip(group_questions, prompts, strict=True)})
    wall = time.perf_counter() - t0
    log.info(
        "%s: %d groups x %d questions, %d prompts scored in %.1f s (%s)",
        method,
        len(groups),
        len(questions),
        n_computed,
        wall,
        f"{wall / n_computed * 1000:.0f} ms/prompt" if n_computed else "all cached",
    )
    return out


def lm_eval_questions(dataset: PreferenceDataset, n: int, seed: int) -> list[str]:
    """A fixed random subset of n scorable question ids (all of them when n is larger), in dataset order.

    The same for every split and seed of one evaluation: score every method on the split's targets that
    are in it, so LLM baselines (too slow for all questions) and GPO are compared on the same questions.
    Drawn with a generator of its own (seed mixed with a fixed stream tag). Ragged data (questions answered by
    different numbers of groups): the n questions the most groups answered, ties in a seeded random order, so the
    sample holds as many scored (group, question) pairs as n questions can (a random draw of GlobalOpinionQA's
    questions, a median of 4 countries each, would score almost none).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    qids = scorable_question_ids(dataset)
    if n >= len(qids):
        return qids
    rng = np.random.default_rng([seed, _EVAL_STREAM])
    counts = [sum(dataset.has(g, q) for g in dataset.groups) for q in qids]
    if min(counts) < max(counts):
        order = sorted(rng.permutation(len(qids)).tolist(), key=lambda i: -counts[i])  # stable: ties stay random
        picked = set(order[:n])
    else:
        picked = set(rng.choice(len(qids), size=n, replace=False).tolist())
    return [q for i, q in enumerate(qids) if i in picked]


def load_lm_for_baselines(settings: Settings) -> BaseLM:
    """The base LLM of `settings` (as the embedder loads it), for `predict_lm_many`."""
    from service.embedder.loading import load_base_lm

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    return load_base_lm(
        settings.embedder,
        revision=settings.embedder_revision,
        device=settings.device,
        load_in_8bit=settings.load_in_8bit,
        cache_dir=settings.cache_dir,
    )
