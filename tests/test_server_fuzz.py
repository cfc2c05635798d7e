"""The HTTP API fuzzed from its own OpenAPI document with schemathesis: every operation, every request body
media type, data that fits the schema and data that does not, over real HTTP on the tiny demo stack. No answer
may be a 5xx, and every status, content type and JSON body must be one the document declares."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _demo import FACE
from _service import serving

EXAMPLES = 20  # per operation, media type and mode: the whole run stays well under a minute on one core


@pytest.fixture(scope="module")
def client(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    from instantid.service.server import ServerSettings, create_app

    settings = ServerSettings(out_dir=tmp_path_factory.mktemp("fuzz-jobs"), max_upload_mb=200_000 / 2**20,
                              max_queued_jobs=4, mount_ui=False)
    with serving(create_app(settings, model=model)) as http:
        yield http


def _checks() -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_operation_answers_only_what_its_openapi_declares(client: httpx.Client) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    base_url = str(client.base_url)
    checks = _checks()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/generate", "/v1/swap", "/v1/group", "/v1/detail", "/v1/jobs",
                                              "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/images/{n}", "/v1/models",
                                              "/health", "/ready", "/metrics", "/sdapi/v1/txt2img",
                                              "/sdapi/v1/img2img", "/sdapi/v1/progress", "/controlnet/module_list",
                                              "/sdapi/v1/options", "/sdapi/v1/interrupt", "/sdapi/v1/skip",
                                              "/sdapi/v1/scripts"}
    tried: dict[str, int] = {}
    failures: list[str] = []

    def fuzz(operation: Any, media_type: str | None, mode: Any, **fixed: Any) -> None:
        label = f"{operation.method.upper()} {operation.path} {media_type or ''} {mode.value} {fixed or ''}"
        tried[label] = 0

        @given(case=operation.as_strategy(generation_mode=mode, media_type=media_type, **fixed))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call(base_url=base_url, timeout=30)
            tried[label] += 1
            case.validate_response(response, checks=checks)

        try:
            run()
        except Unsatisfiable:  # nothing to break: no parameters, or only strings that take anything
            assert mode == GenerationMode.NEGATIVE, label
            del tried[label]
        except Exception as exc:  # every operation is tried; the failures are listed together below
            failures.append(f"{label}: {exc}")

    for operation in operations:
        for media_type in ([body.media_type for body in operation.body] or [None]):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(operation, media_type, mode)
    # The job routes again on a job that exists (a random id is only ever unknown); deleting it comes last.
    job = client.post("/v1/generate?wait=true", files=[("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))],
                      data={"steps": "2", "width": "64", "height": "64"}).json()
    by_path = {(op.method.upper(), op.path): op for op in operations}
    for method, path in (("GET", "/v1/jobs/{job_id}"), ("GET", "/v1/jobs/{job_id}/images/{n}"),
                         ("DELETE", "/v1/jobs/{job_id}")):
        fuzz(by_path[method, path], None, GenerationMode.POSITIVE, path_parameters={"job_id": job["job_id"]})
    assert not failures, "\n\n".join(failures)
    assert all(tried.values()), tried  # every case that could be generated was sent
    # Every operation and body type with data that fits, and the job routes with data that does not too.
    assert len([label for label in tried if " positive " in label and "path_parameters" not in label]) == sum(
        max(1, len(list(op.body))) for op in operations), tried
    assert all(f"POST /v1/{task} {media} negative " in tried for task in ("generate", "swap", "group", "detail")
               for media in ("multipart/form-data", "application/json")), tried
