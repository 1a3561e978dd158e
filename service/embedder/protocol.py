"""The embedding worker's wire protocol: OpenAI-style request and answer models, their bounds, base64 vectors."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.embedder.generate import RESPONSE_POOLED_TEMPLATE_VERSION

FinishReason = Literal["stop", "length"]

# Request bounds: one request must not hold the (serialised) model for long or exhaust memory.
MAX_INPUTS = 2048  # texts per embeddings request (OpenAI's own bound)
MAX_TEXT_CHARS = 32_768  # characters per text or prompt
MAX_N = 16  # samples per completion request
MAX_NEW_TOKENS = 512  # tokens per sample


@dataclass(frozen=True)
class SamplingParams:
    """What to sample: n continuations of `prompt`, each of at most `max_new_tokens` tokens.

    A temperature below `generate.GREEDY_BELOW` is greedy (n identical answers); a fixed `seed` repeats the samples
    exactly; `top_p` None samples from the whole distribution. Not validated here: the worker checks the bounds
    of `CompletionsRequest` (over HTTP and in process alike).
    """

    prompt: str
    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 0.7
    seed: int | None = None
    top_p: float | None = None

    def completions_body(self, *, return_embeddings: bool = False) -> dict[str, Any]:
        """The `POST /v1/completions` body that asks for these samples (unset options left to the worker)."""
        body: dict[str, Any] = {
            "prompt": self.prompt,
            "n": self.n,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if return_embeddings:
            body["return_embeddings"] = True
        return body


Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
TemplateVersion = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class EmbeddingsRequest(BaseModel):
    """OpenAI `POST /v1/embeddings` body (text inputs only)."""

    model_config = ConfigDict(extra="forbid")

    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class CompletionsRequest(BaseModel):
    """OpenAI `POST /v1/completions` body (one text prompt; sampling parameters bounded). The prompt is plain text,
    read as it is, as any completions engine reads it: a chat model's template is the caller's to apply (the API
    does, see `generate.chat_text`)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int = Field(16, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy (n identical answers)")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="a fixed seed repeats the samples exactly")
    return_embeddings: bool = Field(
        False,
        description="extension: each choice also carries its vector (base64 float32), pooled in the sampling "
        f"pass (template {RESPONSE_POOLED_TEMPLATE_VERSION}, see the model card's key_prefixes)",
    )
    model: str | None = None
    user: str | None = None

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(self.prompt, self.n, self.max_tokens, self.temperature, self.seed, self.top_p)


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    revision: str  # ours: lets a client notice that the worker's weights changed under its cache keys
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    embedding: str | None = None  # base64 float32, when the request asked for return_embeddings


class CompletionsResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`: OpenAI's fields, then what names the worker's vectors."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gpo-serve"
    model_id: str
    revision: str
    hidden_size: int | None
    dim: int | None
    pooling: str
    loaded: bool
    template_version: str
    key_prefix: str  # make_key_prefix(model_id@revision, pooling, template_version): cache keys of the API
    key_prefixes: dict[str, str]  # the same for each template version this code knows


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def encode_base64(vector: np.ndarray) -> str:
    """OpenAI's base64 embedding: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_base64(data: str) -> np.ndarray:
    """Inverse of `encode_base64`: a float32 vector [D]."""
    return np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float32)
