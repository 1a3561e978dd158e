"""The OpenAPI schema with this deployment's request limits in it (they come from settings, not from the models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.limits import Limits


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an `anyOf: [X, null]` property (or the property itself)."""
    for branch in prop.get("anyOf", []):
        if branch.get("type") != "null":
            return branch
    return prop


def with_limits(schema: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Write the configured limits (GPO_MAX_*) into the request models' schemas, in place; returns `schema`."""
    components = schema.get("components", {}).get("schemas", {})
    # Text limits apply after surrounding whitespace is stripped, which maxLength cannot say: they are described.
    text_limit = f"at most {limits.max_text_chars} characters, surrounding whitespace stripped"

    def question_fields(name: str) -> None:
        props = components[name]["properties"]
        props["question"]["description"] = text_limit
        props["options"]["maxItems"] = limits.max_options
        props["options"]["description"] = f"unique; each {text_limit}"
        for values in ("distribution", "counts", "ordinals"):
            if values in props:
                _nullable(props[values])["maxItems"] = limits.max_options

    question_fields("QuestionIn")
    question_fields("ContextItemIn")
    components["ContextWriteRequest"]["properties"]["items"]["maxItems"] = limits.max_items_per_request
    predict = components["PredictRequest"]["properties"]
    predict["questions"]["maxItems"] = limits.max_questions_per_request
    _nullable(predict["context"])["maxItems"] = limits.max_items_per_request
    generate = components["GenerateRequest"]["properties"]
    generate["prompt"]["description"] = text_limit
    generate["n"]["maximum"] = limits.max_generate_n
    generate["max_new_tokens"]["maximum"] = limits.max_new_tokens
    return schema


def install_limited_openapi(app: FastAPI, limits: Limits) -> None:
    """Make `app.openapi()` (and /openapi.json, /docs) state the limits this deployment enforces."""
    plain: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_limits(plain(), limits)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
