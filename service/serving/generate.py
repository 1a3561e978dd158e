"""Best-of-n for a group: sample n distinct responses with the base LLM, then rank them by the model of the group's
kind (choice: the responses as one question's options; rating: predicted scores; comparison: mean win rates)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from service.embedder.generate import is_greedy
from service.embedder.protocol import SamplingParams
from service.schemas import MAX_SEED, GenerateRequest, GenerateResponse, ScoredResponse, without_unprintable
from service.serving.contexts import group_state
from service.serving.new_questions import PriorBasis
from service.serving.predict import compare_pairs, group_info, score_responses
from service.serving.predictor import Item
from service.serving.services import in_thread

if TYPE_CHECKING:
    from service.serving.services import Services


async def sample_distinct(
    services: Services, body: GenerateRequest, with_vectors: bool = False
) -> tuple[list[str], np.ndarray | None, int]:
    """Up to n distinct responses (compared without surrounding whitespace, as they are embedded), their vectors
    pooled in the sampling pass (with `with_vectors`), and the number of samples drawn.

    The first call asks the worker for n samples in one batch. When some are duplicates, up to
    `generate_sampling_rounds - 1` more calls ask for the missing ones, with seeds seed + 1, seed + 2, ... so a
    fixed seed still gives the same answer. Greedy decoding (temperature < GREEDY_BELOW) repeats itself: no second
    call.
    What is still missing after the last call is missing from the answer (len(responses) < n, n_sampled says why).
    """
    distinct: dict[str, tuple[str, np.ndarray | None]] = {}  # stripped -> the first sample with that text
    sampled = 0
    prompt_text = await services.chat_prompt(body.prompt)  # the engine is sent plain text
    for round_ in range(services.settings.generate_sampling_rounds):
        want = body.n - len(distinct)
        seed = None if body.seed is None else (body.seed + round_) % (MAX_SEED + 1)
        params = SamplingParams(prompt_text, want, body.max_new_tokens, body.temperature, seed)
        if with_vectors:
            texts, vectors = await services.generator.complete_with_vectors(params)
        else:
            texts, vectors = await services.generator.complete(params), None
        sampled += len(texts)
        for i, t in enumerate(texts):
            t = without_unprintable(t)  # a sampled control character (a NUL) would make the answer unusable as input
            distinct.setdefault(t.strip(), (t, None if vectors is None else vectors[i]))
        if len(distinct) >= body.n or is_greedy(body.temperature):
            break
    kept = list(distinct.values())[: body.n]
    services.metrics.generate_duplicates.inc(sampled - len(kept))
    responses = [t for t, _ in kept]
    return responses, (np.stack([v for _, v in kept]) if with_vectors else None), sampled


class Scored(NamedTuple):
    """One kind's answer before ranking: the responses, a score each, the group's context version, the samples drawn
    and (choice groups) what the prompt's prior comes from."""

    responses: list[str]
    scores: list[float]
    version: int
    n_sampled: int
    basis: PriorBasis | None = None


def _ranked(responses: list[str], scores: list[float]) -> list[ScoredResponse]:
    """Best first; a stable sort, so ties keep the sampling order."""
    order = sorted(range(len(responses)), key=lambda i: -scores[i])
    return [ScoredResponse(text=responses[i], score=float(scores[i])) for i in order]


async def _generate_choice(services: Services, tenant: str, body: GenerateRequest, timings: dict[str, float]) -> Scored:
    """The responses scored as the options of one question given the group's context. Their vectors come from the
    sampling pass itself (our worker pools the hidden states it computed while sampling): one GPO forward, no
    second LLM pass. A completions server that returns no vectors (GPO_GENERATE_VECTORS=false): the samples are
    embedded through the embeddings server in one batched call, pooled over the same text."""
    t0 = time.perf_counter()
    group = await group_state(services, tenant, body.group_id, "choice")  # 404 before any sampling
    t1 = time.perf_counter()
    uses_embedding = services.kinds["choice"].predictor.uses_embedding
    in_pass = uses_embedding and services.settings.sampling_returns_vectors
    responses, embeddings, n_sampled = await sample_distinct(services, body, with_vectors=in_pass)
    if uses_embedding and embeddings is None:
        prompt_text = await services.chat_prompt(body.prompt)
        embeddings = await services.sample_vectors(prompt_text, responses, body.max_new_tokens)
    t2 = time.perf_counter()
    predictor = services.kinds["choice"].predictor
    (prediction,) = await services.forward("choice", group.state, [Item(body.prompt, responses, embeddings)])
    # a cached lookup of what the forward's features already computed, as /predict reports it
    basis = await in_thread(predictor.prior_basis, body.prompt, responses)
    services.metrics.prediction_basis.labels(basis.source, "generate").inc()
    timings.update(context=t1 - t0, sample=t2 - t1, score=time.perf_counter() - t2)
    return Scored(responses, [float(s) for s in prediction.distribution], group.version, n_sampled, basis)


async def _generate_rating(services: Services, tenant: str, body: GenerateRequest, timings: dict[str, float]) -> Scored:
    """The responses ranked by the group's predicted score."""
    t0 = time.perf_counter()
    responses, _, n_sampled = await sample_distinct(services, body)
    t1 = time.perf_counter()
    version, scores = await score_responses(services, tenant, body.group_id, [(body.prompt, r) for r in responses])
    timings.update(sample=t1 - t0, score=time.perf_counter() - t1)
    return Scored(responses, [s for s, _ in scores], version, n_sampled)


async def _generate_comparison(
    services: Services, tenant: str, body: GenerateRequest, timings: dict[str, float]
) -> Scored:
    """Every ordered pair of samples in one forward; a sample's score is its mean win rate against the others (each
    pair counted both ways, (P(i over j) + 1 - P(j over i)) / 2)."""
    t0 = time.perf_counter()
    responses, _, n_sampled = await sample_distinct(services, body)
    t1 = time.perf_counter()
    n = len(responses)
    ordered = [(i, j) for i in range(n) for j in range(n) if i != j]
    version, probs = await compare_pairs(
        services, tenant, body.group_id, [(body.prompt, responses[i], responses[j]) for i, j in ordered]
    )
    p = dict(zip(ordered, probs, strict=True))
    wins = [
        float(np.mean([(p[i, j] + 1.0 - p[j, i]) / 2 for j in range(n) if j != i])) if n > 1 else 0.5 for i in range(n)
    ]
    timings.update(sample=t1 - t0, score=time.perf_counter() - t1)
    return Scored(responses, wins, version, n_sampled)


GENERATE_BY_KIND = {"choice": _generate_choice, "rating": _generate_rating, "comparison": _generate_comparison}


async def generate(
    services: Services, tenant: str, body: GenerateRequest, timings: dict[str, float] | None = None
) -> GenerateResponse:
    """Sample responses with the base LLM and rank them for the group by the model of its kind. `timings` (when
    given) receives the seconds spent on "context" (choice groups: the encoded context), "sample" (the base LLM)
    and "score" (GPO)."""
    kind = "choice"
    if len(services.kinds) > 1:
        info = await in_thread(group_info, services, tenant, body.group_id)  # 404 before any sampling
        if info.kind in services.kinds:
            kind = info.kind
    # A group of a kind not served goes the choice way, whose context read names the error (KindNotServed).
    scored = await GENERATE_BY_KIND[kind](services, tenant, body, timings if timings is not None else {})
    basis = scored.basis
    return GenerateResponse(
        responses=_ranked(scored.responses, scored.scores),
        model_version=services.kinds[kind].predictor.model_version,
        context_version=scored.version,
        n_sampled=scored.n_sampled,
        basis=None if basis is None else basis.source,
        nearest_similarity=None if basis is None else basis.similarity,
        borrowed_share=None if basis is None else basis.share,
    )
