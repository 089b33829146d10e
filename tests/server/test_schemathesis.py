"""A bounded schemathesis run over /openapi.json (issue #23): every route, a fixed number of
generated requests each (valid and invalid bodies), and never a 5xx; errors are JSON.

The server is a 2-layer random-weight model with the bundled model's real tokenizer (text,
chat templates and grammars all run) and a 64-token context, so each request costs milliseconds."""
from __future__ import annotations

import json

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from sgl.runtime.loader.bundled import bundled_model_path
from sgl.runtime.server import Runtime
from tests.server.conftest import TINY_CONFIG

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

# per generation mode; routes without inputs stop after their one request. About 500 requests.
EXAMPLES_PER_ROUTE = 30


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-49k")
    (folder / "config.json").write_text(json.dumps(dict(TINY_CONFIG, vocab_size=49152)))
    runtime = Runtime(model_path=str(folder), load_format="dummy",
                      tokenizer_path=bundled_model_path(), max_total_tokens=4096, context_length=64,
                      request_timeout=120, log_file=str(folder / "server.log"), log_level="warning")
    yield runtime
    runtime.shutdown()


def _operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_route_answers_5xx(fuzz_server):
    url = fuzz_server.url
    operations = _operations(url)
    assert len(operations) >= 15
    session = requests.Session()
    failures: list[str] = []
    calls: list[int] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, url, session, failures, calls)
    assert not failures, "\n".join(failures[:10])
    assert len(calls) >= 10 * len(operations), len(calls)  # the fuzzer really ran
    assert sum(code == 200 for code in calls) >= len(operations)  # and got through
    assert requests.get(url + "/health_generate", timeout=60).status_code == 200


def _fuzz(operation, mode, url: str, session: requests.Session, failures: list[str],
          calls: list[int]) -> None:
    @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        res = case.call(base_url=url, session=session, timeout=150)
        calls.append(res.status_code)
        label = f"{operation.method.upper()} {operation.path} ({mode.value})"
        if res.status_code >= 500:
            failures.append(f"{label}: {res.status_code} {res.text[:300]} for {case.body!r:.300}")
        elif res.status_code >= 400 and not _is_error_body(res.text):
            failures.append(f"{label}: {res.status_code} without an error body: {res.text[:200]}")

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid: a route without parameters or body
        assert mode == GenerationMode.NEGATIVE


def _is_error_body(text: str) -> bool:
    try:
        return "message" in json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
