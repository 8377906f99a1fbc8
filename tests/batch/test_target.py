"""The batch's target read from a Cloud Run service: its request timeout bounds the batch's."""

from __future__ import annotations

import datetime as dt

from google.cloud import run_v2

from tasks.batch.target import Target, target_from_service, url_target


def _service(timeout: dt.timedelta | None) -> run_v2.Service:
    template = run_v2.RevisionTemplate(
        containers=[run_v2.Container(image="i")], max_instance_request_concurrency=4
    )
    if timeout is not None:
        template.timeout = timeout
    return run_v2.Service(
        name="projects/p/locations/us-central1/services/ollama-gemma",
        uri="https://ollama-gemma-abc-uc.a.run.app",
        template=template,
    )


def test_the_request_timeout_never_exceeds_the_service_s() -> None:
    target = target_from_service(_service(dt.timedelta(seconds=600)))
    assert target.timeout_seconds == 600
    timeout, line = target.request_timeout(900)
    assert timeout == 600
    assert line is not None and "(600 s)" in line and "900" in line
    assert target.request_timeout(120) == (120, None)


def test_a_service_without_a_timeout_has_cloud_run_s_default_and_a_url_has_none() -> None:
    assert target_from_service(_service(None)).request_timeout(900)[0] == 300
    plain: Target = url_target("http://127.0.0.1:11434", 4)
    assert plain.request_timeout(900) == (900, None)
