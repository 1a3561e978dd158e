"""Every malformed request gets a 4xx whose message names the problem, and leaves the database unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import Settings

from .conftest import SettingsFactory, authed_client, context_item, question
from .test_tenants import snapshot

LIMITS = dict(
    max_text_chars=60,
    max_options=5,
    max_items_per_request=3,
    max_questions_per_request=3,
    max_context_items=4,
    max_generate_n=3,
    max_new_tokens=8,
    max_body_bytes=8192,
)


def item(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"question": "Is it raining?", "options": ["yes", "no"], "distribution": [0.25, 0.75]}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def ctx(*items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"items": list(items), **extra}


GEN = {"group_id": "g", "prompt": "Say hi.", "n": 2, "max_new_tokens": 4, "seed": 1}
Q = {"question": "Is it sunny?", "options": ["yes", "no"]}

# (name, method, path, json body or raw bytes, status, words the answer must contain)
CASES: list[tuple[str, str, str, Any, int, list[str]]] = [
    # distributions and counts
    (
        "nan",
        "POST",
        "/groups/g/context",
        b'{"items":[{"question":"q","options":["a","b"],"distribution":[NaN,1]}]}',
        422,
        ["distribution", "finite"],
    ),
    (
        "infinity",
        "POST",
        "/groups/g/context",
        b'{"items":[{"question":"q","options":["a","b"],"distribution":[Infinity,0]}]}',
        422,
        ["distribution", "finite"],
    ),
    ("negative", "POST", "/groups/g/context", ctx(item(distribution=[-0.5, 1.5])), 422, ["distribution", "greater"]),
    ("sum", "POST", "/groups/g/context", ctx(item(distribution=[0.5, 0.6])), 422, ["distribution", "sum to 1"]),
    ("counts zero", "POST", "/groups/g/context", ctx(item(distribution=None, counts=[0, 0])), 422, ["counts", "zero"]),
    ("counts negative", "POST", "/groups/g/context", ctx(item(distribution=None, counts=[3, -1])), 422, ["counts"]),
    (
        "counts nan",
        "POST",
        "/groups/g/context",
        b'{"items":[{"question":"q","options":["a","b"],"counts":[1,NaN]}]}',
        422,
        ["counts", "finite"],
    ),
    ("both", "POST", "/groups/g/context", ctx(item(counts=[1, 3])), 422, ["exactly one", "distribution", "counts"]),
    ("neither", "POST", "/groups/g/context", ctx(item(distribution=None)), 422, ["exactly one"]),
    # options, lengths, ordinals
    ("no options", "POST", "/groups/g/context", ctx(item(options=[], distribution=[])), 422, ["options"]),
    ("duplicate", "POST", "/groups/g/context", ctx(item(options=["yes", "yes"])), 422, ["options", "unique", "yes"]),
    ("duplicate after strip", "POST", "/groups/g/context", ctx(item(options=["yes", " yes "])), 422, ["unique"]),
    (
        "length",
        "POST",
        "/groups/g/context",
        ctx(item(distribution=[0.2, 0.3, 0.5])),
        422,
        ["distribution", "3 values for 2 options"],
    ),
    (
        "ordinals length",
        "POST",
        "/groups/g/context",
        ctx(item(ordinals=[1.0])),
        422,
        ["ordinals", "1 values for 2 options"],
    ),
    (
        "ordinals nan",
        "POST",
        "/groups/g/context",
        b'{"items":[{"question":"q","options":["a","b"],"distribution":[0.5,0.5],"ordinals":[1,NaN]}]}',
        422,
        ["ordinals", "finite"],
    ),
    ("empty question", "POST", "/groups/g/context", ctx(item(question="   ")), 422, ["question"]),
    ("unknown field", "POST", "/groups/g/context", ctx(item(weight=2)), 422, ["weight", "xtra"]),
    ("bad mode", "POST", "/groups/g/context", ctx(item(), mode="merge"), 422, ["mode"]),
    ("empty append", "POST", "/groups/g/context", ctx(), 422, ["items", "at least one"]),
    ("bad version", "POST", "/groups/g/context", ctx(item(), expected_version=-1), 422, ["expected_version"]),
    # size limits
    ("long question", "POST", "/groups/g/context", ctx(item(question="x" * 61)), 422, ["question", "at most 60"]),
    ("long option", "POST", "/groups/g/context", ctx(item(options=["yes", "n" * 61])), 422, ["options", "at most 60"]),
    (
        "many options",
        "POST",
        "/groups/g/context",
        ctx(item(options=list("abcdef"), distribution=[1 / 6] * 6)),
        422,
        ["options", "at most 5"],
    ),
    (
        "many items",
        "POST",
        "/groups/g/context",
        ctx(*[item(question=f"q{i}") for i in range(4)]),
        422,
        ["items", "at most 3"],
    ),
    (
        "group full",
        "POST",
        "/groups/g/context",
        ctx(*[item(question=f"q{i}") for i in range(3)]),
        422,
        ["items", "at most 4"],
    ),
    ("body too large", "POST", "/groups/g/context", ctx(item(question="x" * 9000)), 413, ["too large", "8192"]),
    ("not json", "POST", "/groups/g/context", b"{not json", 422, ["JSON"]),
    ("bad group id", "POST", "/groups/no%20spaces/context", ctx(item()), 422, ["group_id"]),
    ("bad item id", "DELETE", "/groups/g/context/0", None, 422, ["item_id"]),
    ("unknown item", "DELETE", "/groups/g/context/999999", None, 404, ["999999"]),
    ("conflict", "POST", "/groups/g/context", ctx(item(), expected_version=7), 409, ["version 1", "expected 7"]),
    # /predict
    ("predict unknown", "POST", "/predict", {"group_id": "nope", "questions": [Q]}, 404, ["nope", "not found"]),
    (
        "predict both",
        "POST",
        "/predict",
        {"group_id": "g", "context": [item()], "questions": [Q]},
        422,
        ["exactly one", "group_id", "context"],
    ),
    ("predict neither", "POST", "/predict", {"questions": [Q]}, 422, ["exactly one"]),
    ("predict no questions", "POST", "/predict", {"group_id": "g", "questions": []}, 422, ["questions"]),
    (
        "predict many questions",
        "POST",
        "/predict",
        {"group_id": "g", "questions": [Q] * 4},
        422,
        ["questions", "at most 3"],
    ),
    (
        "predict bad inline",
        "POST",
        "/predict",
        {"context": [item(distribution=[1, 1])], "questions": [Q]},
        422,
        ["context", "distribution"],
    ),
    (
        "predict duplicate options",
        "POST",
        "/predict",
        {"group_id": "g", "questions": [{**Q, "options": ["a", "a"]}]},
        422,
        ["options", "unique"],
    ),
    # /generate
    ("generate unknown", "POST", "/generate", {**GEN, "group_id": "nope"}, 404, ["nope", "not found"]),
    ("generate n", "POST", "/generate", {**GEN, "n": 4}, 422, ["n", "at most 3"]),
    ("generate n zero", "POST", "/generate", {**GEN, "n": 0}, 422, ["n", "greater"]),
    ("generate tokens", "POST", "/generate", {**GEN, "max_new_tokens": 9}, 422, ["max_new_tokens", "at most 8"]),
    ("generate temperature", "POST", "/generate", {**GEN, "temperature": 3}, 422, ["temperature"]),
    ("generate prompt", "POST", "/generate", {**GEN, "prompt": ""}, 422, ["prompt"]),
    ("generate long prompt", "POST", "/generate", {**GEN, "prompt": "p" * 61}, 422, ["prompt", "at most 60"]),
    ("generate seed", "POST", "/generate", {**GEN, "seed": -1}, 422, ["seed"]),
    # the text policy: no lone surrogate, no control character but tab / line feed / carriage return (both databases)
    (
        "surrogate question",
        "POST",
        "/groups/g/context",
        b'{"items":[{"question":"\\ud800 x","options":["a","b"],"distribution":[0.5,0.5]}]}',
        422,
        ["question", "unicode"],
    ),
    (
        "surrogate predict",
        "POST",
        "/predict",
        b'{"group_id":"g","questions":[{"question":"q","options":["a","\\udfff"]}]}',
        422,
        ["options", "unicode"],
    ),
    (
        "surrogate key",
        "POST",
        "/predict",
        b'{"group_id":"g","questions":[{"question":"q","options":["a","b"],"\\ud83d":1}]}',
        422,
        ["unicode", "\\ud83d"],  # the key echoed escaped: the answer is still JSON
    ),
    ("nul option", "POST", "/groups/g/context", ctx(item(options=["yes", "n\x00o"])), 422, ["options", "U+0000"]),
    ("nul question", "POST", "/predict", {"group_id": "g", "questions": [{**Q, "question": "\x00"}]}, 422, ["U+0000"]),
    ("control prompt", "POST", "/generate", {**GEN, "prompt": "hi\x1b[31m"}, 422, ["prompt", "U+001B"]),
    ("c1 control", "POST", "/groups/g/context", ctx(item(question="a\x85b")), 422, ["question", "U+0085"]),
    # a JSON boolean is never a number; integer bounds are exact in JSON; bodies are UTF-8 JSON with unique keys
    ("seed false", "POST", "/generate", {**GEN, "seed": False}, 422, ["seed", "integer"]),
    ("n true", "POST", "/generate", {**GEN, "n": True}, 422, ["n", "integer"]),
    ("temperature true", "POST", "/generate", {**GEN, "temperature": True}, 422, ["temperature", "number"]),
    ("seed past 2^53", "POST", "/generate", {**GEN, "seed": 2**53}, 422, ["seed", "9007199254740991"]),
    ("distribution bools", "POST", "/groups/g/context", ctx(item(distribution=[True, False])), 422, ["distribution"]),
    (
        "counts bools",
        "POST",
        "/groups/g/context",
        ctx(item(distribution=None, counts=[True, 2])),
        422,
        ["counts", "number"],
    ),
    ("version true", "POST", "/groups/g/context", ctx(item(), expected_version=True), 422, ["expected_version"]),
    (
        "duplicate key",
        "POST",
        "/groups/g/context",
        b'{"items":[{"question":"q","options":["a","b"],"distribution":[1,0],"distribution":[0,1]}]}',
        422,
        ["duplicate key", "distribution"],
    ),
    ("duplicate top key", "POST", "/predict", b'{"group_id":"g","group_id":"h","questions":[]}', 422, ["duplicate"]),
    ("not utf-8", "POST", "/predict", b'{"group_id":"g\xff","questions":[]}', 422, ["utf-8"]),
    # group ids a URL normaliser would change: "." and ".." (sent percent-encoded, as a client must)
    ("dot group", "POST", "/groups/%2e/context", ctx(item()), 422, ["group_id"]),
    ("dot dot group", "POST", "/groups/%2E%2E/context", ctx(item()), 422, ["group_id"]),
    ("dot dot predict", "POST", "/predict", {"group_id": "..", "questions": [Q]}, 422, ["group_id"]),
]


@pytest.fixture
def limited_settings(make_settings: SettingsFactory, database_url: str) -> Settings:
    return make_settings(database_url, **LIMITS)


@pytest.fixture
def limited_client(limited_settings: Settings) -> Iterator[TestClient]:
    with authed_client(limited_settings) as c:
        assert (
            c.post("/groups/g/context", json=ctx(item(question="first?"), item(question="second?"))).status_code == 200
        )
        yield c


@pytest.mark.parametrize("name,method,path,body,status,words", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_is_refused_and_stores_nothing(
    limited_client: TestClient,
    limited_settings: Settings,
    name: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    words: list[str],
) -> None:
    before = snapshot(limited_settings.database_url)
    if isinstance(body, bytes):
        answer = limited_client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    else:
        answer = limited_client.request(method, path, json=body)
    assert answer.status_code == status, answer.text
    text = json.dumps(answer.json()["detail"])
    for word in words:
        assert word.lower() in text.lower(), (word, text)
    if status == 422 and isinstance(answer.json()["detail"], list):
        assert all(set(e) >= {"loc", "msg", "type"} for e in answer.json()["detail"])
    assert snapshot(limited_settings.database_url) == before


def test_a_chunked_body_over_the_limit_is_refused(limited_client: TestClient, limited_settings: Settings) -> None:
    """No Content-Length (chunked): counted as it arrives."""
    before = snapshot(limited_settings.database_url)
    payload = json.dumps(ctx(item(question="x" * 9000))).encode()
    answer = limited_client.post(
        "/groups/g/context",
        content=iter([payload[:4000], payload[4000:]]),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413 and "too large" in answer.json()["detail"]
    assert snapshot(limited_settings.database_url) == before


def test_counts_are_normalised_and_a_near_one_sum_is_renormalised(limited_client: TestClient) -> None:
    assert limited_client.post("/groups/h/context", json=ctx(item(distribution=None, counts=[1, 3]))).status_code == 200
    assert limited_client.post(
        "/groups/h/context", json=ctx(item(question="b?", distribution=[0.2995, 0.7]))
    ).is_success
    stored = [i["distribution"] for i in limited_client.get("/groups/h/context").json()["items"]]
    assert stored[0] == [0.25, 0.75]
    assert stored[1] == pytest.approx([0.2995 / 0.9995, 0.7 / 0.9995])


def test_tabs_newlines_and_dotted_group_ids_are_accepted(limited_client: TestClient) -> None:
    body = ctx(item(question="Line one\n\tline two\r\n", options=["yes", "no"]))
    for group in ("...", ".g", "g.", "..g"):
        assert limited_client.post(f"/groups/{group}/context", json=body).status_code == 200, group
        assert limited_client.get(f"/groups/{group}/context").json()["items"][0]["question"] == "Line one\n\tline two"


def test_a_valid_request_of_the_same_shapes_passes(limited_client: TestClient) -> None:
    """The limits are bounds, not off-by-one refusals: exactly at each limit is accepted."""
    at_limit = ctx(item(question="q" * 60, options=["a", "b", "c", "d", "e" * 60], distribution=[0.2] * 5))
    assert limited_client.post("/groups/g/context", json=at_limit).status_code == 200
    assert limited_client.post("/predict", json={"group_id": "g", "questions": [Q] * 3}).status_code == 200
    assert limited_client.post("/generate", json={**GEN, "n": 3, "max_new_tokens": 8}).status_code == 200
    assert limited_client.post("/generate", json={**GEN, "n": 1}).status_code == 200


def test_predict_with_known_questions(limited_client: TestClient) -> None:
    """A sanity anchor for the refusals above: the same group answers a good request."""
    answer = limited_client.post("/predict", json={"group_id": "g", "questions": [question(1)]})
    assert answer.status_code == 200 and abs(sum(answer.json()["predictions"][0]["distribution"]) - 1) < 1e-5
    assert context_item(0)  # the shared helpers still build valid items


def test_the_openapi_schema_states_the_configured_limits(limited_client: TestClient) -> None:
    components = limited_client.get("/openapi.json").json()["components"]["schemas"]
    item_props = components["ContextItemIn"]["properties"]
    assert item_props["options"]["maxItems"] == 5
    assert item_props["distribution"]["anyOf"][0]["maxItems"] == 5
    assert "at most 60 characters" in item_props["question"]["description"]
    assert components["ContextWriteRequest"]["properties"]["items"]["maxItems"] == 3
    assert components["PredictRequest"]["properties"]["questions"]["maxItems"] == 3
    generate = components["GenerateRequest"]["properties"]
    assert (generate["n"]["maximum"], generate["max_new_tokens"]["maximum"]) == (3, 8)


ANY_CHAR = st.one_of(
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates (JSON can carry them as \uXXXX escapes)
    st.sampled_from(["\x00", "\x1b", "\x7f", "\x85", "\t", "\n", "\r", "\u2028", "\ufeff"]),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(ANY_CHAR, min_size=1, max_size=12))
def test_any_text_in_any_text_field_is_answered_without_a_server_error(limited_client: TestClient, text: str) -> None:
    """Arbitrary Unicode (surrogates and control characters included) in a question, an option, a prompt: a 200 or
    a 4xx whose body is JSON, never a 5xx."""
    bodies = [
        ("/predict", {"group_id": "g", "questions": [{"question": text, "options": ["a", text + "b"]}]}),
        (
            "/groups/g/context",
            {"mode": "append", "items": [{"question": text, "options": ["x", "y"], "counts": [1, 2]}]},
        ),
        ("/generate", {**GEN, "prompt": text}),
    ]
    for path, body in bodies:
        raw = json.dumps(body, ensure_ascii=True).encode()  # surrogates as \\ud8xx escapes
        answer = limited_client.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert answer.status_code < 500, (path, repr(text), answer.text)
        json.loads(answer.text)


@pytest.mark.parametrize("path", ["/groups", "/groups/g", "/groups/g/context", "/groups/g/context/1", "/predict"])
def test_a_405_allows_exactly_the_methods_that_answer_on_the_path(limited_client: TestClient, path: str) -> None:
    methods = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
    answers = {m: limited_client.request(m, path) for m in methods}
    refused = {m for m, a in answers.items() if a.status_code == 405}
    assert refused and refused != set(methods)
    for m in refused:
        assert set(answers[m].headers["allow"].split(", ")) == set(methods) - refused, (m, path)


def test_the_schema_says_an_append_needs_an_item_as_the_api_does(limited_client: TestClient) -> None:
    """`items: []` is refused for an append (also when `mode` is absent) and empties the context on a replace: the
    OpenAPI schema states the same (if mode is append, then minItems 1)."""
    import jsonschema_rs

    schema = limited_client.get("/openapi.json").json()["components"]["schemas"]["ContextWriteRequest"]
    rule = jsonschema_rs.validator_for({"if": schema["if"], "then": schema["then"]})
    for body in [ctx(), ctx(mode="append"), ctx(mode="replace"), ctx(item()), ctx(item(), mode="append")]:
        accepted = limited_client.post("/groups/g/context", json=body).status_code == 200
        assert rule.is_valid(body) == accepted, body


def test_what_the_service_writes_passes_its_own_text_policy() -> None:
    from service.schemas import printable_text, without_unprintable

    raw = "\x00Hi\tthere\x1b[0m\n\x85ok\r\u2028é"
    clean = without_unprintable(raw)
    assert clean == "Hi\tthere[0m\nok\r\u2028é" and printable_text(clean) == clean
