"""Core pieces without HTTP: errors as google.api_core reads them, operations, route matching."""

from __future__ import annotations

import json

import pytest
import requests
from google.api_core import exceptions
from google.cloud import artifactregistry_v1 as ar
from google.longrunning import operations_pb2
from google.protobuf import json_format

from emulator.gcp.errors import (
    GoogleApiError,
    already_exists,
    not_found,
    permission_denied,
    resource_exhausted,
)
from emulator.gcp.operations import Operations
from emulator.gcp.projects import project_number
from emulator.gcp.protojson import any_json
from emulator.gcp.routing import Route


def _raised(error: GoogleApiError) -> exceptions.GoogleAPICallError:
    response = requests.Response()
    response.status_code = error.http_status
    response._content = json.dumps(error.to_json()).encode()
    response.request = requests.Request("GET", "http://x/v1/y").prepare()
    return exceptions.from_http_response(response)


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        (not_found("gone"), exceptions.NotFound),
        (already_exists("dup"), exceptions.Conflict),
        (permission_denied("no", "IAM_PERMISSION_DENIED"), exceptions.Forbidden),
        (resource_exhausted("slow down"), exceptions.TooManyRequests),
    ],
)
def test_http_errors_map_to_google_classes(error: GoogleApiError, cls: type) -> None:
    raised = _raised(error)
    assert type(raised) is cls
    assert raised.message.endswith(error.message)


def test_error_info_gives_reason_domain_metadata() -> None:
    error = permission_denied("nope", "SERVICE_DISABLED", {"service": "run.googleapis.com"})
    raised = _raised(error)
    assert raised.reason == "SERVICE_DISABLED"
    assert raised.domain == "googleapis.com"
    assert raised.metadata == {"service": "run.googleapis.com"}


def test_operation_pending_for_polls_then_done_parses_strictly() -> None:
    ops = Operations()
    repo = ar.Repository(name="projects/p/locations/l/repositories/r", format_=1)
    name = "projects/p/locations/l/operations/1"
    first = ops.create(
        name, ar.OperationMetadata(), resolve=lambda: (repo, None), polls_until_done=2
    )
    assert "done" not in first
    assert "done" not in ops.get_json(name)
    assert "done" not in ops.get_json(name)
    done = ops.get_json(name)
    assert done["done"] is True
    assert (
        done["response"]["@type"]
        == "type.googleapis.com/google.devtools.artifactregistry.v1.Repository"
    )
    # The LRO poller parses with ignore_unknown_fields=False: the JSON must be exact.
    op = json_format.Parse(
        json.dumps(done), operations_pb2.Operation(), ignore_unknown_fields=False
    )
    assert op.response.type_url.endswith("artifactregistry.v1.Repository")


def test_operation_error_uses_grpc_code() -> None:
    ops = Operations()
    first = ops.create("operations/x", None, resolve=lambda: (None, already_exists("dup", "R")))
    assert first["error"]["code"] == 6
    assert first["error"]["details"][0]["reason"] == "R"
    assert "response" not in first


def test_resolve_returning_none_keeps_operation_pending() -> None:
    ops = Operations()
    state = {"ready": False}
    ops.create(
        "operations/y", None, resolve=lambda: ({"@type": "x"}, None) if state["ready"] else None
    )
    assert "done" not in ops.get_json("operations/y")
    state["ready"] = True
    assert ops.get_json("operations/y")["done"] is True


def test_unknown_operation_is_404() -> None:
    with pytest.raises(GoogleApiError) as info:
        Operations().get_json("operations/nope")
    assert info.value.http_status == 404


def test_any_json_requires_type_for_dicts() -> None:
    with pytest.raises(ValueError):
        any_json({"name": "x"})


def test_route_matching_verbs_and_variables() -> None:
    enable = Route("POST", "/v1/projects/{project}/services/{service}:enable", lambda c: None)
    get = Route("GET", "/v1/projects/{project}/services/{service}", lambda c: None)
    image = Route("GET", "/v1/r/{repository}/dockerImages/{image}", lambda c: None)
    rest = Route("GET", "/v1/operations/{name=**}", lambda c: None)
    segs = ["v1", "projects", "p", "services", "run.googleapis.com:enable"]
    assert enable.match("POST", segs) == {"project": "p", "service": "run.googleapis.com"}
    assert enable.match("GET", segs) is None
    assert get.match("GET", ["v1", "projects", "p", "services", "run.googleapis.com"]) is not None
    assert image.match("GET", ["v1", "r", "x", "dockerImages", "img@sha256:ab"]) == {
        "repository": "x",
        "image": "img@sha256:ab",
    }
    assert rest.match("GET", ["v1", "operations", "build", "p", "abc"]) == {"name": "build/p/abc"}
    assert rest.match("GET", ["v1", "operations"]) is None


def test_project_number_is_deterministic_and_12_digits() -> None:
    assert project_number("local-project") == project_number("local-project")
    assert len(str(project_number("local-project"))) == 12
    assert project_number("local-project") != project_number("other-project")
    assert project_number("123456789012") == 123456789012
