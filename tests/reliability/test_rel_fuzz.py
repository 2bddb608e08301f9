"""Property-based fuzzing of every endpoint from the service's own OpenAPI schema (schemathesis).

Schemathesis generates requests that fit the schema (positive) and that break it (negative);
they run in-process against the app with its lifespan running and every model loaded. No
answer may be a 5xx, every error must be in the one error shape, and afterwards the service
still answers readiness and predictions. The generated requests are counted: at least
MIN_REQUESTS in all.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from tests.conftest import make_settings, wait_ready

MIN_REQUESTS = 2000
EXAMPLES = {GenerationMode.POSITIVE: 900, GenerationMode.NEGATIVE: 1150}
BASE = "http://testserver"
API_KEY = "fuzz-key"
ADMIN_KEY = "fuzz-admin-key"
TRANSPORT_KEYS = ("method", "url", "headers", "params", "cookies", "json", "content")


def _send(client: TestClient, case: Any) -> Any:
    kwargs = case.as_transport_kwargs(base_url=BASE)
    if "data" in kwargs:  # raw bytes or text: httpx wants them as content
        kwargs["content"] = kwargs.pop("data")
    if not kwargs.get("cookies"):
        kwargs.pop("cookies", None)
    return client.request(**{k: v for k, v in kwargs.items() if k in TRANSPORT_KEYS})


def _is_error_shape(body: bytes) -> bool:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(doc, dict)
        and set(doc) == {"error", "code"}
        and isinstance(doc["error"], str)
        and isinstance(doc["code"], str)
    )


@pytest.mark.slow
def test_schema_fuzzing_finds_no_5xx_and_only_the_error_shape(
    model_repo: Path, tmp_path: Path
) -> None:
    # Keys on: the fuzzer sends what it likes in headers, so 401 paths are exercised too, and
    # a valid key (the admin key on the repository extension) on half of the cases lets
    # bodies reach the decoders and the repository.
    from service.http.app import create_app

    app = create_app(make_settings(model_repo, tmp_path, api_keys=API_KEY, admin_api_key=ADMIN_KEY))
    schema = schemathesis.openapi.from_dict(app.openapi())
    statuses: Counter[int] = Counter()
    problems: list[str] = []

    with TestClient(app, base_url=BASE) as client:
        wait_ready(client)
        for mode, examples in EXAMPLES.items():

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=schema.as_strategy(mode))
            def fuzz(case: Any) -> None:
                if sum(statuses.values()) % 2 == 0:
                    key = ADMIN_KEY if case.path.startswith("/v2/repository") else API_KEY
                    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
                response = _send(client, case)
                statuses[response.status_code] += 1
                label = f"{case.method} {case.formatted_path} -> {response.status_code}"
                if response.status_code >= 500:
                    problems.append(f"{label}: {response.text[:300]}")
                elif response.status_code >= 400 and not _is_error_shape(response.content):
                    problems.append(f"{label} not in the error shape: {response.text[:300]}")

            fuzz()

        # Still healthy: ready, and (once both models are loaded again, should the fuzzer
        # have unloaded one) a good prediction goes through.
        assert client.get("/v2/health/ready").status_code == 200
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        for model in ("bin", "img"):
            assert client.post(f"/v2/repository/models/{model}/load", headers=admin).is_success
        ok = client.post(
            "/predict",
            json={"model": "bin", "instances": [[0.1, 0.2, 0.3]]},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert ok.status_code == 200, ok.text

    total = sum(statuses.values())
    assert not problems, f"{len(problems)} bad answers, e.g. {problems[:5]}"
    assert total >= MIN_REQUESTS, f"only {total} generated requests: {dict(statuses)}"
    # The run reached the models, not only the front door.
    assert statuses[200] > 0 and statuses[401] > 0, dict(statuses)
    print(f"{total} generated requests by status: {dict(sorted(statuses.items()))}")
