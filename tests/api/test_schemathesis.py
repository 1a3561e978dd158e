"""schemathesis against the service's own OpenAPI schema, over real HTTP: no server error, no answer outside the schema.

Short by default (CI); a longer run: GPO_FUZZ_EXAMPLES=500 pytest tests/api/test_schemathesis.py
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from .conftest import (
    COMPARISON_CHECKPOINT,
    RATING_CHECKPOINT,
    SettingsFactory,
    api_key,
    bearer,
    context_item,
    served_app,
)

EXAMPLES = int(os.environ.get("GPO_FUZZ_EXAMPLES", "25"))
# Every check of schemathesis runs except one: positive_data_acceptance expects every schema-valid body to be
# accepted, but JSON Schema cannot state some of our rules (a distribution sums to 1, options are unique after
# stripping, exactly one of distribution / counts, a group's size), so random schema-valid context items are
# rightly refused with 422. Those refusals are tested one by one in test_validation.py.
EXCLUDED = [positive_data_acceptance]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzz_target(
    request: pytest.FixtureRequest,
    module_settings: SettingsFactory,
    tmp_path_factory: pytest.TempPathFactory,
    rating_store: Path,
) -> Iterator[tuple[str, dict]]:
    if request.param == "sqlite":
        db: Path = tmp_path_factory.mktemp("fuzz") / "gpo.sqlite3"
        url = f"sqlite:///{db}"
    else:  # the session's Postgres database; the groups are the fuzz tenant's own
        url = request.getfixturevalue("postgres_session_url")
    settings = module_settings(
        url,
        max_generate_n=4,
        max_new_tokens=8,
        model_store=rating_store,
        rating_checkpoint=RATING_CHECKPOINT,
        comparison_checkpoint=COMPARISON_CHECKPOINT,
    )
    with served_app(settings) as base:
        headers = bearer(api_key(url, "fuzz"))
        # A group the fuzzer may hit by name, so predictions and deletes reach their happy paths too.
        seeded = httpx.post(f"{base}/groups/a/context", json={"items": [context_item(0)]}, headers=headers)
        assert seeded.status_code == 200, seeded.text
        rating = {"kind": "rating", "prompt": "Rate this reply.", "response": "Fine.", "score": 3, "scale": [1, 5]}
        seeded = httpx.post(f"{base}/groups/b/context", json={"items": [rating]}, headers=headers)
        assert seeded.status_code == 200, seeded.text
        pair = {"kind": "comparison", "prompt": "Which?", "response_a": "One.", "response_b": "Two.", "preferred": "a"}
        seeded = httpx.post(f"{base}/groups/c/context", json={"items": [pair]}, headers=headers)
        assert seeded.status_code == 200, seeded.text
        yield base, headers


def test_api_keeps_its_schema(fuzz_target: tuple[str, dict]) -> None:
    """Every operation of /openapi.json, EXAMPLES generated requests each (valid and invalid ones), all checks."""
    base, headers = fuzz_target
    api = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    failures: list[str] = []
    calls: dict[str, int] = {}  # requests sent per operation (shown with pytest -s)
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: schemathesis.Case) -> None:
            label = case.operation.label
            calls[label] = calls.get(label, 0) + 1
            case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

        try:
            fuzz()
        except Exception as exc:  # collect every operation's failure, then fail once with all of them
            failures.append(f"{operation.label}: {exc}")
    print(f"\nschemathesis, up to {EXAMPLES} examples per operation; requests sent: {calls}")
    assert not failures, "\n\n".join(failures)
