"""Predictions for a group: answer distributions over new questions' options (choice), predicted scores of
responses (rating) or P(a preferred) of response pairs (comparison), each against the group's encoded context
through the micro-batcher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from service.db import repository as repo
from service.schemas import PairPrediction, Prediction, PredictRequest, PredictResponse, RatingPrediction
from service.serving.contexts import embed_items, encode, group_state
from service.serving.kinds import KINDS
from service.serving.predictor import AnsweredItem, Item
from service.serving.services import in_thread

if TYPE_CHECKING:
    from service.serving.services import Services


def group_info(services: Services, tenant: str, group_id: str) -> repo.GroupInfo:
    with services.transaction() as session:
        return repo.get_group(session, tenant, group_id)


async def _require_served(services: Services, tenant: str, group_id: str, kind: str) -> None:
    """When `kind` is not served, raise the error the group's own kind calls for (no model, or other targets)."""
    if kind not in services.kinds:
        info = await in_thread(group_info, services, tenant, group_id)
        services.model(group_id, info.kind, asked=kind)


async def score_responses(
    services: Services, tenant: str, group_id: str, prompt_responses: Sequence[tuple[str, str]]
) -> tuple[int, list[tuple[float, float]]]:
    """(context version, [(score, std)] on the group's scale) of each (prompt, response) for a rating group."""
    await _require_served(services, tenant, group_id, "rating")
    group = await group_state(services, tenant, group_id, "rating")
    vectors = await embed_items(services, services.kinds["rating"], [(p, [r]) for p, r in prompt_responses])
    targets = [Item(p, [r], v) for (p, r), v in zip(prompt_responses, vectors, strict=True)]
    predictions = await services.forward("rating", group.state, targets)
    lo, hi = (group.payload or {}).get("scale", (0.0, 1.0))  # the group's scale: its items'
    return group.version, [
        (lo + (hi - lo) * float(p.distribution[0]), (hi - lo) * float(p.std[0])) for p in predictions
    ]


async def compare_pairs(
    services: Services, tenant: str, group_id: str, pairs: Sequence[tuple[str, str, str]]
) -> tuple[int, list[float]]:
    """(context version, P(a preferred)) of each (prompt, response a, response b) for a comparison group."""
    await _require_served(services, tenant, group_id, "comparison")
    group = await group_state(services, tenant, group_id, "comparison")
    vectors = await embed_items(services, services.kinds["comparison"], [(p, [a, b]) for p, a, b in pairs])
    targets = [Item(p, [a, b], v) for (p, a, b), v in zip(pairs, vectors, strict=True)]
    return group.version, await services.forward("comparison", group.state, targets)


async def _predict_pairs(services: Services, tenant: str, body: PredictRequest) -> PredictResponse:
    assert body.group_id is not None and body.pairs is not None, "validated: pairs go with a stored group"
    version, probs = await compare_pairs(
        services, tenant, body.group_id, [(p.prompt, p.response_a, p.response_b) for p in body.pairs]
    )
    services.metrics.predictions.labels("comparison").inc(len(probs))
    return PredictResponse(
        predictions=[],
        preferences=[PairPrediction(probability_a=v) for v in probs],
        model_version=services.kinds["comparison"].predictor.model_version,
        context_version=version,
    )


async def _predict_scores(services: Services, tenant: str, body: PredictRequest) -> PredictResponse:
    assert body.group_id is not None and body.responses is not None, "validated: responses go with a stored group"
    version, scores = await score_responses(
        services, tenant, body.group_id, [(r.prompt, r.response) for r in body.responses]
    )
    services.metrics.predictions.labels("rating").inc(len(scores))
    return PredictResponse(
        predictions=[],
        scores=[RatingPrediction(score=s, std=sd) for s, sd in scores],
        model_version=services.kinds["rating"].predictor.model_version,
        context_version=version,
    )


async def _predict_choices(services: Services, tenant: str, body: PredictRequest) -> PredictResponse:
    """Distributions over each question's options given a stored group's context or an inline one."""
    assert body.questions is not None, "validated: questions, responses or pairs"
    model = services.kinds["choice"]
    questions = [(q.question, q.options) for q in body.questions]
    context_version: int | None = None
    if body.group_id is not None:
        group = await group_state(services, tenant, body.group_id, "choice")
        context_version, state = group.version, group.state
        embeddings = await embed_items(services, model, questions)
    else:
        assert body.context is not None, "validated: group_id or context"
        # Inline context and questions in one embeddings call.
        embedded = await embed_items(services, model, [*((c.question, c.options) for c in body.context), *questions])
        n_ctx = len(body.context)
        context = [
            AnsweredItem(c.question, c.options, e, np.asarray(c.probabilities(), dtype=np.float32))
            for c, e in zip(body.context, embedded[:n_ctx], strict=True)
        ]
        embeddings = embedded[n_ctx:]
        state = await in_thread(encode, services, context, model.predictor)
    targets = [Item(q, opts, e) for (q, opts), e in zip(questions, embeddings, strict=True)]
    predictions = await services.forward("choice", state, targets)
    # cached lookups of what the forward's features already computed (Predictor.prior_basis)
    bases = await in_thread(lambda: [model.predictor.prior_basis(q, opts) for q, opts in questions])
    services.metrics.predictions.labels("stored" if context_version is not None else "inline").inc(len(targets))
    for b in bases:
        services.metrics.prediction_basis.labels(b.source, "predict").inc()
    if context_version is not None:
        services.metrics.context_version.set(context_version)
    return PredictResponse(
        predictions=[
            Prediction(
                distribution=p.distribution.tolist(),
                std=p.std.tolist(),
                basis=b.source,
                nearest_similarity=b.similarity,
                borrowed_share=b.share,
            )
            for p, b in zip(predictions, bases, strict=True)
        ],
        model_version=model.predictor.model_version,
        context_version=context_version,
    )


PREDICT_BY_KIND = {"choice": _predict_choices, "rating": _predict_scores, "comparison": _predict_pairs}


async def predict(services: Services, tenant: str, body: PredictRequest) -> PredictResponse:
    """The request's targets (questions, responses or pairs: one of them, validated) predicted for its group."""
    (asked,) = [k.name for k in KINDS.values() if getattr(body, k.targets) is not None]
    return await PREDICT_BY_KIND[asked](services, tenant, body)
