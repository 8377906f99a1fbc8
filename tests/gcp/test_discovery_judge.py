"""The discovery-document judge itself: it passes Google-shaped exchanges and names each fault."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gcp.discovery import Exchange, Judge

SERVICES = "/v2/projects/p/locations/us-central1/services"
INT_ENUMS = {"$alt": ["json;enum-encoding=int"]}


@pytest.fixture(scope="module")
def judge() -> Judge:
    return Judge()


def _create_service(body: dict[str, Any], response: dict[str, Any]) -> Exchange:
    return Exchange("POST", SERVICES, {"serviceId": ["s"], **INT_ENUMS}, body, 200, response)


OPERATION = {
    "name": "projects/p/locations/us-central1/operations/abc",
    "metadata": {
        "@type": "type.googleapis.com/google.cloud.run.v2.Service",
        "name": "projects/p/locations/us-central1/services/s",
        "terminalCondition": {"state": 4, "lastTransitionTime": "2026-12-03T09:00:00.123Z"},
    },
    "done": False,
}
SERVICE = {
    "template": {
        "containers": [{"image": "i", "resources": {"limits": {"cpu": "8"}}}],
        "scaling": {"maxInstanceCount": 7},
        "timeout": "600s",
    },
    "labels": {"managed-by": "ollama-cloudrun"},
}


def test_a_google_shaped_exchange_has_no_violation(judge: Judge) -> None:
    assert judge.violations(_create_service(SERVICE, OPERATION)) == []


def test_snake_case_request_fields_are_accepted_as_proto3_json_parsers_do(judge: Judge) -> None:
    body = {"template": {"max_instance_request_concurrency": 4}}
    assert judge.violations(_create_service(body, OPERATION)) == []


@pytest.mark.parametrize(
    ("body", "response", "expected"),
    [
        ({"template": {"bogus": 1}}, OPERATION, "request.template: unknown field 'bogus'"),
        ({"template": {"timeout": "10 minutes"}}, OPERATION, "not a duration"),
        ({"ingress": "WIDE_OPEN"}, OPERATION, "'WIDE_OPEN' is not one of"),
        ({"labels": ["a"]}, OPERATION, "expected an object"),
        (
            SERVICE,
            {**OPERATION, "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Nope"}},
            "names no schema",
        ),
        (
            SERVICE,
            {**OPERATION, "metadata": {**OPERATION["metadata"], "uri_typo": "x"}},  # type: ignore[dict-item]
            "unknown field 'uri_typo'",
        ),
        (SERVICE, {**OPERATION, "done": "no"}, "expected a boolean"),
    ],
)
def test_each_fault_is_named(
    judge: Judge, body: dict[str, Any], response: dict[str, Any], expected: str
) -> None:
    violations = judge.violations(_create_service(body, response))
    assert any(expected in v for v in violations), violations


def test_undeclared_paths_and_query_parameters(judge: Judge) -> None:
    assert (
        "no method" in judge.violations(Exchange("GET", "/v2/projects/p/x", {}, None, 200, {}))[0]
    )
    listing = Exchange("GET", SERVICES, {"pageSize": ["5"], "colour": ["red"]}, None, 200, {})
    assert judge.violations(listing) == [
        f"GET {SERVICES} (run.projects.locations.services.list): "
        "query parameter 'colour' is not declared"
    ]


def test_multi_segment_names_match_their_declared_pattern(judge: Judge) -> None:
    poll = Exchange("GET", "/v1/operations/build/p/ZTE0ODdm", {}, None, 200, {"name": "x"})
    assert judge.violations(poll) == []


def test_errors_must_be_google_rpc_status(judge: Judge) -> None:
    good = {
        "error": {
            "code": 404,
            "message": "not found",
            "status": "NOT_FOUND",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "R"}],
        }
    }
    get = SERVICES + "/s"
    assert judge.violations(Exchange("GET", get, {}, None, 404, good)) == []
    bad = {"error": {"code": 400, "message": "", "status": "NOTFOUND"}}
    faults = judge.violations(Exchange("GET", get, {}, None, 404, bad))
    assert len(faults) == 3, faults  # code, message, status
    assert judge.violations(Exchange("GET", get, {}, None, 500, {"detail": "boom"}))


def test_apis_without_a_document_are_judged_by_their_gapic_client(judge: Judge) -> None:
    service = "/v1/projects/p/locations/global/services/run.googleapis.com"
    path = f"{service}/quotaInfos/CpuAllocPerProjectRegion"
    good = {"name": path[4:], "quotaId": "CpuAllocPerProjectRegion", "dimensionsInfos": []}
    assert judge.violations(Exchange("GET", path, INT_ENUMS, None, 200, good)) == []
    bad = Exchange("GET", path, {"colour": ["red"]}, None, 200, {**good, "quota_typo": 1})
    faults = judge.violations(bad)
    assert len(faults) == 2 and "colour" in faults[0] and "quota_typo" in faults[1], faults
