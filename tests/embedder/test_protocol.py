"""The worker's wire protocol: SamplingParams to a completions body and back, unset options left out."""

from __future__ import annotations

from service.embedder.protocol import CompletionsRequest, SamplingParams


def test_sampling_params_survive_the_wire() -> None:
    for params in (SamplingParams("hi"), SamplingParams("hi", 3, 20, 0.0, seed=5, top_p=0.9)):
        body = CompletionsRequest.model_validate(params.completions_body())
        assert body.sampling_params() == params and not body.return_embeddings
    assert SamplingParams("hi").completions_body(return_embeddings=True) == {
        "prompt": "hi",
        "n": 1,
        "max_tokens": 128,
        "temperature": 0.7,
        "return_embeddings": True,
    }
