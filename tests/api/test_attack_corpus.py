"""A hand-made corpus of hostile, malformed and edge-case HTTP requests, sent through the real app on both databases.

Each case states the status the API should give (never a 5xx); every refusal is a JSON answer with a `detail` and
leaves the database exactly as it was, and an accepted write changes it. Categories: path and group ids, JSON
structure, types, text, the HTTP level, keys and tenants, semantics. Requests a TestClient cannot send faithfully
(malformed HTTP, double-encoded paths: the TestClient decodes a path twice) go over a socket to a real uvicorn, which
answers 4xx or closes, and still answers afterwards. test_validation.py holds the field-by-field cases; none is
repeated here.
"""

from __future__ import annotations

import json
import socket
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from service.auth import key_digest
from service.config import Settings

from . import test_validation as validation
from .conftest import api_key, served_app
from .test_tenants import snapshot
from .test_validation import GEN, Q, ctx, item

limited_settings = validation.limited_settings  # test_validation's fixtures: its small limits, group g of 2 items
limited_client = validation.limited_client

ANY_4XX = 0  # the right refusal is debatable: any 4xx with a JSON detail
DROP = "-"  # a header with this value is removed from the request (e.g. the client's default key)


class Attack(NamedTuple):
    name: str
    request: str  # "METHOD /path"
    body: Any = None  # bytes: sent as they are (Content-Type application/json unless headers say otherwise)
    status: int = 422
    headers: dict[str, str] | None = None  # {key}, {digest} (this client's key) and {other} (another tenant's)
    setup: tuple[tuple[str, str, Any], ...] = ()  # requests that must succeed before the snapshot
    words: tuple[str, ...] = ()  # in the answer's text


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


def gen_with(field: str, raw: bytes) -> bytes:
    """A /generate body whose `field` holds the raw JSON text `raw`."""
    return json.dumps({**GEN, field: "@"}).encode().replace(b'"@"', raw)


def q(**changes: Any) -> dict[str, Any]:
    """A /predict body for group g with one question, changed."""
    return {"group_id": "g", "questions": [{**Q, **changes}]}


VERSION_0 = json.dumps(ctx(item())).encode()[:-1] + b',"expected_version":-0}'
SAME = {"kind": "comparison", "prompt": "p", "response_a": "x", "response_b": " x", "preferred": "a"}
RATING = {"kind": "rating", "prompt": "p", "response": "r", "score": 3, "scale": [1, 5]}
EMPTY_GROUP = (("POST", "/groups/empty/context", {"mode": "replace", "items": []}),)
DELETE_G = (("DELETE", "/groups/g", None),)
OTHER = {"Authorization": "Bearer {other}"}
P_JSON = json.dumps(q()).encode()
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
MULTIPART = (
    b'--x\r\nContent-Disposition: form-data; name="group_id"\r\n\r\ng\r\n--x--\r\n',
    "multipart/form-data; boundary=x",
)
LATIN1 = json.dumps(q(question="caf\u00e9?"), ensure_ascii=False).encode("latin-1")
LATIN1_TYPE = "application/json; charset=latin-1"
ZWSP, RLO, EMOJI = "\u200b", "\u202e", "\U0001f600"

PATHS: list[Attack] = [
    Attack("encoded slash traversal", "GET /groups/x%2f..%2fg/context", status=404, words=("Not Found",)),
    Attack("dot dot to group", "GET /groups/.%2E", words=("group_id",)),
    Attack("backslash traversal", "GET /groups/..%5cg/context", words=("group_id",)),
    Attack("id of 128 chars is valid", "GET /groups/" + "a" * 128, status=404, words=("not found",)),
    Attack("id of 129 chars", "GET /groups/" + "a" * 129, words=("group_id",)),
    Attack("id of 10000 chars", "POST /groups/" + "a" * 10000 + "/context", ctx(item()), words=("group_id",)),
    Attack("cyrillic confusable id", "GET /groups/%D0%B3/context", words=("group_id",)),
    Attack("fullwidth id", "GET /groups/%EF%BD%87", words=("group_id",)),
    Attack("zero width in id", "POST /groups/g%E2%80%8B/context", ctx(item()), words=("group_id",)),
    Attack("nul in id", "GET /groups/g%00/context", words=("group_id",)),
    Attack("invalid utf-8 in id", "GET /groups/%FF%FE/context", words=("group_id",)),
    Attack("plus in id", "GET /groups/a+b", words=("group_id",)),
    Attack("sql in id", "GET /groups/g'%20OR%20'1'='1/context", words=("group_id",)),
    Attack("like wildcard percent", "DELETE /groups/%25", words=("group_id",)),
    Attack("like wildcard underscore", "GET /groups/_/context", status=404, words=("'_' not found",)),
    Attack("case variant", "GET /groups/G/context", status=404, words=("'G' not found",)),
    Attack("trailing dot", "DELETE /groups/g.", status=404, words=("'g.' not found",)),
    Attack("semicolon parameter", "GET /groups/g;x=1/context", words=("group_id",)),
    Attack("query on a path is ignored", "GET /groups/g/context?group_id=h&tenant=x", status=200, words=('"g"',)),
    Attack("empty segment", "GET /groups//context", status=404, words=("Not Found",)),
    Attack("item id past int32", "DELETE /groups/g/context/2147483648", words=("item_id",)),
    Attack("item id negative", "DELETE /groups/g/context/-1", words=("item_id",)),
    Attack("item id fraction", "DELETE /groups/g/context/1.5", words=("item_id",)),
    Attack("item id hex", "DELETE /groups/g/context/0x1", words=("item_id",)),
    Attack("item id fullwidth digit", "DELETE /groups/g/context/%EF%BC%91", words=("item_id",)),
    Attack("item of another group", "DELETE /groups/other/context/1", status=404, words=("'other' not found",)),
]

STRUCTURE: list[Attack] = [
    Attack("nesting 10000 levels", "POST /predict", nested(10000), 413, words=("too large",)),
    # past Python's recursion limit the parser gives up: a refusal, FastAPI's generic 400 rather than the strict 422
    Attack("nesting 4000 levels", "POST /predict", nested(4000), 422),  # past the parser's stack: invalid JSON
    Attack("unclosed nesting", "POST /groups/g/context", b'{"a":' * 1600, 422),
    Attack("nesting 400 in a field", "POST /generate", gen_with("prompt", nested(400)), words=("prompt",)),
    Attack("nesting 900 in a field", "POST /generate", gen_with("prompt", nested(900)), words=("prompt",)),
    Attack("objects 300 deep", "POST /generate", gen_with("prompt", b'{"a":' * 300 + b"1" + b"}" * 300)),
    Attack("2000 empty items", "POST /groups/g/context", b'{"items":[' + b",".join([b"{}"] * 2000) + b"]}"),
    Attack("3000 values", "POST /groups/g/context", ctx(item(distribution=[0] * 3000)), words=("distribution",)),
    Attack("top-level array", "POST /predict", [q()], words=("dict",)),
    Attack("top-level string", "POST /generate", "g"),
    Attack("top-level number", "POST /groups/g/context", b"1"),
    Attack("body null", "POST /predict", b"null", words=("dict",)),
    Attack("empty body", "POST /groups/g/context", b"", words=("required",)),
    Attack("whitespace body", "POST /generate", b" \n\t ", words=("json",)),
    Attack("trailing garbage", "POST /predict", P_JSON + b" xyz", words=("json",)),
    Attack("two objects", "POST /predict", P_JSON * 2, words=("json",)),
    # RFC 8259 lets a parser refuse a byte order mark: the strict reader does
    Attack("bom prefix", "POST /predict", b"\xef\xbb\xbf" + P_JSON, words=("json",)),
    Attack("line comment", "POST /predict", b"// hi\n" + P_JSON, words=("json",)),
    Attack("single quotes", "POST /generate", b"{'group_id':'g','prompt':'p'}", words=("json",)),
    Attack("trailing comma", "POST /generate", b'{"group_id":"g","prompt":"p",}', words=("json",)),
    Attack("escaped duplicate key", "POST /groups/g/context", b'{"mode":"append","\\u006dode":"replace"}'),
    Attack("raw control char in string", "POST /generate", b'{"group_id":"g","prompt":"a\x01b"}', words=("json",)),
    Attack("seed 1e999", "POST /generate", gen_with("seed", b"1e999"), words=("seed",)),
    Attack("temperature 1e999", "POST /generate", gen_with("temperature", b"1e999"), words=("temperature",)),
    Attack("seed -0 is zero", "POST /generate", gen_with("seed", b"-0"), 200, words=("responses",)),
    Attack("count 1e-400 is zero", "POST /groups/g/context", ctx(item(distribution=None, counts=[1e-400, 1])), 200),
    # Python refuses to read an integer of over 4300 digits: a refusal, FastAPI's generic 400
    Attack("n of 5000 digits", "POST /generate", gen_with("n", b"9" * 5000), 422),  # past Python's digit limit
    Attack("temperature of 5000 digits", "POST /generate", gen_with("temperature", b"0." + b"0" * 5000), 200),
    Attack("leading zero", "POST /generate", gen_with("n", b"02"), words=("json",)),
    Attack("hex literal", "POST /generate", gen_with("n", b"0x2"), words=("json",)),
    Attack("lowercase nan", "POST /generate", gen_with("temperature", b"nan"), words=("json",)),
    Attack("extra tenant field", "POST /predict", {**q(), "tenant": "other"}, words=("tenant",)),
    Attack("extra item id", "POST /groups/g/context", ctx(item(id=1)), words=("id",)),
    Attack("proto key", "POST /generate", {**GEN, "__proto__": {"admin": True}}, words=("__proto__",)),
]

TYPES: list[Attack] = [
    Attack("n string", "POST /generate", {**GEN, "n": "2"}, words=("n",)),
    Attack("n float", "POST /generate", {**GEN, "n": 2.0}, words=("n", "integer")),
    Attack("n null", "POST /generate", {**GEN, "n": None}, words=("n",)),
    Attack("n 2^63", "POST /generate", {**GEN, "n": 2**63}, words=("n",)),
    Attack("tokens string", "POST /generate", {**GEN, "max_new_tokens": "4"}, words=("max_new_tokens",)),
    Attack("tokens fraction", "POST /generate", {**GEN, "max_new_tokens": 4.5}, words=("max_new_tokens",)),
    Attack("seed float", "POST /generate", {**GEN, "seed": 1.0}, words=("seed",)),
    Attack("seed at 2^53-1", "POST /generate", {**GEN, "seed": 2**53 - 1}, 200, words=("responses",)),
    Attack("version string", "POST /groups/g/context", ctx(item(), expected_version="1"), words=("expected_version",)),
    Attack("version past int32", "POST /groups/g/context", ctx(item(), expected_version=2**31)),
    Attack("version -0 is zero", "POST /groups/g/context", VERSION_0, 409, words=("expected 0",)),
    Attack("distribution empty", "POST /groups/g/context", ctx(item(distribution=[])), words=("distribution",)),
    Attack("distribution nested", "POST /groups/g/context", ctx(item(distribution=[[0.5], [0.5]]))),
    Attack("distribution strings", "POST /groups/g/context", ctx(item(distribution=["0.5", "0.5"]))),
    Attack("distribution object", "POST /groups/g/context", ctx(item(distribution={"yes": 0.5, "no": 0.5}))),
    Attack("distribution zeros", "POST /groups/g/context", ctx(item(distribution=[0, 0])), words=("sum to 1",)),
    Attack("distribution sum 50", "POST /groups/g/context", ctx(item(distribution=[25, 25])), words=("less",)),
    Attack("distribution sum 1.002", "POST /groups/g/context", ctx(item(distribution=[0.502, 0.5]))),
    Attack("counts past 1e15", "POST /groups/g/context", ctx(item(distribution=None, counts=[1e16, 1]))),
    Attack("ordinals past 1e9", "POST /groups/g/context", ctx(item(ordinals=[1e10, 0])), words=("ordinals",)),
    Attack("group id number", "POST /predict", {**q(), "group_id": 5}, words=("group_id",)),
    Attack("questions object", "POST /predict", {"group_id": "g", "questions": Q}, words=("questions",)),
    Attack("options string", "POST /predict", q(options="ab"), words=("options",)),
    Attack("question operator object", "POST /predict", q(question={"$ne": ""}), words=("question",)),
    Attack("limit text", "GET /groups?limit=abc", words=("limit",)),
    Attack("limit 1001", "GET /groups?limit=1001", words=("limit",)),
    Attack("limit exponent", "GET /groups?limit=1e2", words=("limit",)),
    Attack("offset past int32", "GET /groups?offset=2147483648", words=("offset",)),
]

TEXT: list[Attack] = [
    Attack("61 zero width spaces", "POST /predict", q(question=ZWSP * 61), words=("at most 60",)),
    Attack("61 emoji", "POST /predict", q(options=["a", EMOJI * 61]), words=("at most 60",)),
    Attack("60 emoji", "POST /predict", q(question=EMOJI * 60), 200, words=("predictions",)),
    Attack("61 combining marks", "POST /predict", q(question="e" + "\u0301" * 60), words=("at most 60",)),
    Attack("60 chars padded", "POST /predict", q(question=" " * 200 + "x" * 60 + "\n" * 200), 200),
    Attack("unicode spaces only", "POST /predict", q(question="\u3000\u00a0\u2003"), words=("question",)),
    Attack("zero width only", "POST /predict", q(question=ZWSP), 200, words=("predictions",)),
    Attack("rtl override", "POST /predict", q(options=["yes", RLO + "exe.txt"]), 200, words=("predictions",)),
    Attack("options differ by case", "POST /predict", q(options=["Yes", "yes"]), 200, words=("predictions",)),
    Attack("options nfc nfd", "POST /predict", q(options=["\u00e9", "e\u0301"]), 200, words=("predictions",)),
    Attack("options differ by nbsp", "POST /predict", q(options=["yes", "\u00a0yes"]), words=("unique",)),
    Attack("delete char", "POST /predict", q(question="a\x7fb"), words=("U+007F",)),
    Attack("form feed inside", "POST /groups/g/context", ctx(item(question="a\x0cb")), words=("U+000C",)),
    Attack("vertical tab inside", "POST /generate", {**GEN, "prompt": "a\x0bb"}, words=("U+000B",)),
    Attack("escaped emoji pair", "POST /generate", gen_with("prompt", b'"\\ud83d\\ude00"'), 200),
    Attack("reversed surrogate pair", "POST /generate", gen_with("prompt", b'"\\ude00\\ud83d"'), words=("prompt",)),
    Attack("surrogate in group id", "POST /generate", gen_with("group_id", b'"g\\udc00"'), words=("group_id",)),
    Attack("noncharacters stored", "POST /groups/g/context", ctx(item(question="\ufffe\uffff?")), 200),
    Attack("max code point stored", "POST /groups/g/context", ctx(item(question="\U0010ffff")), 200),
    Attack("private use stored", "POST /groups/g/context", ctx(item(options=["\ue000", "no"])), 200),
    Attack("sql text stored", "POST /groups/g/context", ctx(item(question="'); DROP TABLE groups; --")), 200),
    Attack("zero width prompt", "POST /generate", {**GEN, "prompt": ZWSP}, 200, words=("responses",)),
]

HTTP: list[Attack] = [
    Attack("text/plain", "POST /predict", P_JSON, headers={"Content-Type": "text/plain"}),
    Attack("form encoded", "POST /generate", b"group_id=g&prompt=p", headers=FORM),
    Attack("multipart", "POST /predict", MULTIPART[0], headers={"Content-Type": MULTIPART[1]}),
    # a body that does not say it is JSON is not read as JSON (FastAPI): refused like text/plain
    Attack("no content type", "POST /predict", P_JSON, 422, {"Content-Type": DROP}, words=("dictionary",)),
    Attack("json suffix type", "POST /predict", P_JSON, 200, {"Content-Type": "application/problem+json"}),
    Attack("latin-1 body", "POST /predict", LATIN1, headers={"Content-Type": LATIN1_TYPE}, words=("utf-8",)),
    Attack("utf-16 body", "POST /predict", json.dumps(q()).encode("utf-16"), words=("utf-8",)),
    Attack("overlong utf-8", "POST /generate", gen_with("prompt", b'"\xc0\xaf"'), words=("utf-8",)),
    Attack("cesu-8 surrogate", "POST /generate", gen_with("prompt", b'"\xed\xa0\x80"'), words=("utf-8",)),
    Attack("declared length too large", "POST /predict", P_JSON, 413, {"Content-Length": "99999999"}),
    Attack("put predict", "PUT /predict", q(), 405),
    Attack("patch generate", "PATCH /generate", GEN, 405),
    Attack("trace group", "TRACE /groups/g", status=405),
    Attack("put healthz", "PUT /healthz", status=405),
    Attack("post metrics", "POST /metrics", b"x", 405),
    Attack("put openapi", "PUT /openapi.json", status=405),
    Attack("made-up method", "BREW /groups", status=405),
    Attack("options predict", "OPTIONS /predict", status=405),
    # RFC 9110 wants HEAD wherever GET answers; the app refuses it, consistently with its Allow header
    Attack("head groups", "HEAD /groups", status=405),
    Attack("head openapi", "HEAD /openapi.json", status=200),
    Attack("long query string", "GET /groups?x=" + "x" * 60000, status=200, words=('"groups":',)),
    Attack("unknown path", "GET /admin", status=404, words=("Not Found",)),
    Attack("etc passwd", "GET /%2e%2e/%2e%2e/etc/passwd", status=404, words=("Not Found",)),
    Attack("path case", "POST /Predict", q(), 404, words=("Not Found",)),
    Attack("nul after path", "POST /predict%00", q(), 404, words=("Not Found",)),
    Attack("health is healthz", "GET /health", status=404, words=("Not Found",)),
]

AUTH: list[Attack] = [
    Attack("10000 char token", "GET /groups", status=401, headers={"Authorization": "Bearer " + "a" * 10000}),
    Attack("non-ascii token", "GET /groups/g", status=401, headers={"Authorization": "Bearer gpo_\u00e9\u00e9"}),
    Attack("lowercase scheme", "GET /groups", status=200, headers={"Authorization": "bearer {key}"}),
    Attack("key with suffix", "GET /groups/g", status=401, headers={"Authorization": "Bearer {key}x"}),
    Attack("key twice", "GET /groups/g", status=401, headers={"Authorization": "Bearer {key} {key}"}),
    Attack("sql token", "DELETE /groups/g", status=401, headers={"Authorization": "Bearer ' OR '1'='1"}),
    Attack("stored digest as key", "DELETE /groups/g", status=401, headers={"Authorization": "Bearer {digest}"}),
    Attack("key in query", "GET /groups?api_key={key}", status=401, headers={"Authorization": DROP}),
    Attack("key in cookie", "GET /groups", status=401, headers={"Authorization": DROP, "Cookie": "key={key}"}),
    Attack("key in x-api-key", "GET /groups", status=401, headers={"Authorization": DROP, "X-API-Key": "{key}"}),
    Attack("garbage key on healthz", "GET /healthz", status=200, headers={"Authorization": "Bearer \x7f"}),
    Attack("other tenant lists", "GET /groups", status=200, headers=OTHER, words=('"groups":[]',)),
    Attack("other tenant reads", "GET /groups/g/context", status=404, headers=OTHER, words=("'g' not found",)),
    Attack("other tenant deletes item", "DELETE /groups/g/context/1", status=404, headers=OTHER),
    Attack("other tenant version", "POST /groups/g/context", ctx(item(), expected_version=1), 409, OTHER),
    Attack("other tenant predicts", "POST /predict", q(), 404, OTHER, words=("'g' not found",)),
]

SEMANTICS: list[Attack] = [
    Attack("predict empty group", "POST /predict", {**q(), "group_id": "empty"}, setup=EMPTY_GROUP),
    Attack("generate empty group", "POST /generate", {**GEN, "group_id": "empty"}, setup=EMPTY_GROUP),
    Attack("predict case variant", "POST /predict", {**q(), "group_id": "G"}, 404, words=("'G' not found",)),
    Attack("generate n 2^31", "POST /generate", {**GEN, "n": 2**31}, words=("n",)),
    Attack("generate no tokens", "POST /generate", {**GEN, "max_new_tokens": 0}, words=("max_new_tokens",)),
    Attack("temperature negative", "POST /generate", {**GEN, "temperature": -0.01}, words=("temperature",)),
    Attack("temperature nan", "POST /generate", gen_with("temperature", b"NaN"), words=("temperature",)),
    Attack("temperature -0.0", "POST /generate", {**GEN, "temperature": -0.0}, 200, words=("responses",)),
    Attack("top_p", "POST /generate", {**GEN, "top_p": 0.9}, words=("top_p",)),
    Attack("mode upper case", "POST /groups/g/context", ctx(item(), mode="REPLACE"), words=("mode",)),
    Attack("mode empty", "POST /groups/g/context", ctx(item(), mode=""), words=("mode",)),
    Attack("mode null", "POST /groups/g/context", ctx(item(), mode=None), words=("mode",)),
    Attack("replace stale version", "POST /groups/g/context", ctx(item(), mode="replace", expected_version=5), 409),
    Attack("create-only on existing", "POST /groups/g/context", ctx(item(), expected_version=0), 409),
    Attack("replace mixed kinds", "POST /groups/g/context", ctx(item(), RATING, mode="replace"), words=("one kind",)),
    Attack("rating into choice group", "POST /groups/g/context", ctx(RATING), 409, words=("holds choice items",)),
    Attack("kind not a string", "POST /groups/g/context", ctx(item(kind=1))),
    Attack("comparison same responses", "POST /groups/h/context", ctx(SAME), words=("differ",)),
    Attack(
        "responses for a choice group",
        "POST /predict",
        {"group_id": "g", "responses": [{"prompt": "p", "response": "r"}]},
        words=("send 'questions'",),
    ),
    Attack(
        "inline context of 4",
        "POST /predict",
        {"context": [item(question=f"{i}?") for i in range(4)], "questions": [Q]},
        words=("at most 3",),
    ),
    Attack("item that never was", "DELETE /groups/g/context/3", status=404),
    Attack(
        "delete item twice", "DELETE /groups/g/context/1", status=404, setup=(("DELETE", "/groups/g/context/1", None),)
    ),
    Attack("delete group twice", "DELETE /groups/g", status=404, setup=DELETE_G),
    Attack("item after group deleted", "DELETE /groups/g/context/2", status=404, setup=DELETE_G),
]

CASES = [*PATHS, *STRUCTURE, *TYPES, *TEXT, *HTTP, *AUTH, *SEMANTICS]
ALLOW = {
    "/predict": "POST",
    "/generate": "POST",
    "/healthz": "GET",
    "/metrics": "GET",
    "/openapi.json": "GET, HEAD",
    "/groups": "GET",
    "/groups/g": "DELETE, GET",
}


def send(client: TestClient, attack: Attack, fills: dict[str, str]) -> httpx.Response:
    method, path = attack.request.split(" ", 1)
    headers = dict(attack.headers or {})
    kwargs: dict[str, Any] = {}
    if isinstance(attack.body, bytes):
        kwargs["content"] = attack.body
        headers = {"Content-Type": "application/json", **headers}
    elif attack.body is not None:
        kwargs["json"] = attack.body
    for placeholder, value in fills.items():
        path = path.replace(placeholder, value)
        headers = {k: v.replace(placeholder, value) for k, v in headers.items()}
    request = client.build_request(method, path, **kwargs)
    for name, value in headers.items():
        if value == DROP:
            request.headers.pop(name, None)
        else:
            request.headers[name] = value
    return client.send(request)


@pytest.mark.parametrize("attack", CASES, ids=[c.name for c in CASES])
def test_attack_is_answered_as_it_should_be(
    limited_client: TestClient, limited_settings: Settings, attack: Attack
) -> None:
    url = limited_settings.database_url
    key = limited_client.headers["Authorization"].removeprefix("Bearer ")
    fills = {"{key}": key, "{digest}": key_digest(key)}
    if "{other}" in json.dumps(attack.headers):
        fills["{other}"] = api_key(url, "other-tenant")
    for method, path, body in attack.setup:
        assert limited_client.request(method, path, json=body).is_success, (method, path)
    before = snapshot(url)
    answer = send(limited_client, attack, fills)
    status, (method, path) = answer.status_code, attack.request.split(" ", 1)
    assert status < 500, answer.text
    if attack.status == ANY_4XX:
        assert 400 <= status < 500, answer.text
    else:
        assert status == attack.status, answer.text
    if method != "HEAD" and status != 204:
        assert answer.headers["content-type"].startswith("application/json"), answer.headers
        body = answer.json()
        if status >= 400:
            assert body["detail"], body
            if status == 422 and isinstance(body["detail"], list):
                assert all(set(e) >= {"loc", "msg", "type"} for e in body["detail"]), body
    for word in attack.words:
        assert word.lower() in answer.text.lower(), (word, answer.text[:2000])
    if status == 405:
        assert answer.headers["allow"] == ALLOW[path], answer.headers
    if status == 401:
        assert answer.headers["www-authenticate"] == "Bearer"
    if status < 300 and method in ("POST", "DELETE") and path not in ("/predict", "/generate"):
        assert snapshot(url) != before  # an accepted write is stored
    else:
        assert snapshot(url) == before  # a refusal (or a read) stores nothing


# ---------------------------------------------------------------------------------------------- a real server

REQUEST = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"
KEYED = b"HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
# (name, bytes sent on a new connection ({key}: a valid key), the status; None: any 4xx, or the server just closes)
RAW: list[tuple[str, bytes, int | None]] = [
    ("malformed request line", b"GARBAGE\r\n\r\n", None),
    ("header without colon", b"GET /healthz HTTP/1.1\r\nHost: t\r\nNoColonHere\r\n\r\n", None),
    (
        "10000 headers",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 10000 + b"Connection: close\r\n\r\n",
        431,  # GPO_MAX_HEADERS: uvicorn's httptools parser itself takes any number
    ),
    (
        "1 MB header",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2**20 + b"\r\nConnection: close\r\n\r\n",
        431,  # GPO_MAX_HEADER_BYTES
    ),
    (
        "length and chunked",
        REQUEST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        None,
    ),
    ("bad chunk size", REQUEST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", None),
    ("length not a number", REQUEST + b"Content-Length: abc\r\n\r\n{}", None),
    ("two lengths", REQUEST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", None),
    ("http/1.0", b"GET /healthz HTTP/1.0\r\n\r\n", 200),
    ("double encoded dots", b"GET /groups/%252e%252e/context " + KEYED, 422),
    ("double encoded slash", b"DELETE /groups/g%252fcontext " + KEYED, 422),
    ("encoded percent", b"GET /groups/g%2541 " + KEYED, 422),
]


def exchange(base_url: str, payload: bytes, timeout_s: float = 15.0) -> bytes:
    """Send `payload` on a new connection; everything the server writes until it closes (b"" if it just closes)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed before reading everything: a refusal
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


@pytest.mark.parametrize("name,payload,status", RAW, ids=[r[0] for r in RAW])
def test_a_real_server_refuses_malformed_http_and_lives_on(
    limited_settings: Settings, name: str, payload: bytes, status: int | None
) -> None:
    url = limited_settings.database_url
    payload = payload.replace(b"{key}", api_key(url).encode())
    before = snapshot(url)
    with served_app(limited_settings) as base_url:
        answer = exchange(base_url, payload)
        head, _, body = answer.partition(b"\r\n\r\n")
        if status is None:
            assert not answer or head.startswith(b"HTTP/1.1 4"), answer[:500]
        else:
            assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode(), answer[:500]
            assert head.lower().count(b"content-type: application/json") == 1 and json.loads(body), answer[:500]
            assert status < 400 or json.loads(body)["detail"]
        assert httpx.get(base_url + "/healthz", timeout=15).json() == {"status": "ok"}
    assert snapshot(url) == before
