"""Cloud Run Admin API v2 routes, under `/v2/projects/{project}/locations/{location}/services`:
create, list, get, patch, delete, the service's getIamPolicy / setIamPolicy /
testIamPermissions, and its revisions: list, get, delete (discovery document run.v2,
`projects.locations.services.revisions`; exportStatus is not served); and
the emulator's own `GET /_emulator/cloud_run/instances` (per-instance accounting: `instances`).

Control (a prefix Google never uses), per service:
  POST /_emulator/outage {"project"?, "location", "service", "outage": "unavailable" | "refused" |
  null} -> {"service", "outage"}: the service's ingress cuts every connection, then answers 503
  or refuses connections (a region dying mid-run), or serves again (null).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2

from emulator.gcp.cloud_run.backend import CloudRunBackend
from emulator.gcp.cloud_run.instances import usage
from emulator.gcp.cloud_run.spec import SERVICE
from emulator.gcp.errors import invalid_argument
from emulator.gcp.protojson import parse_pb
from emulator.gcp.routing import Call, Route

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


def _backend(call: Call) -> CloudRunBackend:
    return call.emulator.get(CloudRunBackend)


def _ids(call: Call) -> tuple[str, str, str]:
    return call.param("project"), call.param("location"), call.param("service")


def _flag(call: Call, name: str) -> bool:
    return call.query.get(name, "false").lower() in ("true", "1")


def create(call: Call) -> dict[str, Any]:
    return _backend(call).create_service(
        call.param("project"),
        call.param("location"),
        call.query.get("serviceId", ""),
        call.body,
        call.caller,
        _flag(call, "validateOnly"),
    )


def get(call: Call) -> run_v2.Service:
    return _backend(call).get_service(*_ids(call))


def list_(call: Call) -> dict[str, Any]:
    return _backend(call).list_services(
        call.param("project"),
        call.param("location"),
        _page_size(call),
        call.query.get("pageToken", ""),
    )


def update(call: Call) -> dict[str, Any]:
    mask = [p for p in call.query.get("updateMask", "").split(",") if p]
    return _backend(call).update_service(
        *_ids(call),
        call.body,
        call.caller,
        allow_missing=_flag(call, "allowMissing"),
        update_mask=mask,
        validate_only=_flag(call, "validateOnly"),
    )


def delete(call: Call) -> dict[str, Any]:
    return _backend(call).delete_service(*_ids(call))


def _page_size(call: Call) -> int:
    size = call.query.get("pageSize", "0")
    if not size.lstrip("-").isdigit():
        raise invalid_argument(f"Invalid value at 'page_size' (TYPE_INT32), \"{size}\"")
    return int(size)


def get_revision(call: Call) -> run_v2.Revision:
    return _backend(call).get_revision(*_ids(call), call.param("revision"))


def list_revisions(call: Call) -> dict[str, Any]:
    token = call.query.get("pageToken", "")
    return _backend(call).list_revisions(*_ids(call), _page_size(call), token)


def delete_revision(call: Call) -> dict[str, Any]:
    return _backend(call).delete_revision(
        *_ids(call),
        call.param("revision"),
        etag=call.query.get("etag", ""),
        validate_only=_flag(call, "validateOnly"),
    )


def get_iam_policy(call: Call) -> policy_pb2.Policy:
    return _backend(call).get_iam_policy(*_ids(call))


def set_iam_policy(call: Call) -> policy_pb2.Policy:
    request = parse_pb(call.body, iam_policy_pb2.SetIamPolicyRequest())
    assert isinstance(request, iam_policy_pb2.SetIamPolicyRequest)
    return _backend(call).set_iam_policy(*_ids(call), request.policy)


def test_iam_permissions(call: Call) -> iam_policy_pb2.TestIamPermissionsResponse:
    request = parse_pb(call.body, iam_policy_pb2.TestIamPermissionsRequest())
    assert isinstance(request, iam_policy_pb2.TestIamPermissionsRequest)
    granted = _backend(call).test_iam_permissions(*_ids(call), call.caller, request.permissions)
    return iam_policy_pb2.TestIamPermissionsResponse(permissions=granted)


def outage(call: Call) -> dict[str, Any]:
    body = call.body
    missing = [key for key in ("location", "service", "outage") if key not in body]
    if missing:
        raise invalid_argument(f"outage needs {', '.join(missing)}")
    project = str(body.get("project") or call.emulator.config.project)
    location, service = str(body["location"]), str(body["service"])
    mode = _backend(call).set_outage(project, location, service, body["outage"])
    name = f"projects/{project}/locations/{location}/services/{service}"
    return {"service": name, "outage": mode}


def instances(call: Call) -> dict[str, Any]:
    """The emulator's own accounting of Cloud Run instances (not a Google API)."""
    services = []
    for found in _backend(call).service_instances():
        rows = [usage(found.now, i) for i in found.instances]
        services.append(
            {
                "project": found.project,
                "location": found.location,
                "service": found.service,
                "now": found.now,
                "instances": rows,
                "billable_seconds": round(sum(r["billable_seconds"] for r in rows), 6),
            }
        )
    return {"services": services}


def routes(emulator: Emulator) -> list[Route]:
    base = "/v2/projects/{project}/locations/{location}/services"
    one = base + "/{service}"
    return [
        Route("POST", base, create, SERVICE),
        Route("GET", base, list_, SERVICE),
        Route("GET", one, get, SERVICE),
        Route("PATCH", one, update, SERVICE),
        Route("DELETE", one, delete, SERVICE),
        Route("GET", one + ":getIamPolicy", get_iam_policy, SERVICE),
        Route("POST", one + ":setIamPolicy", set_iam_policy, SERVICE),
        Route("POST", one + ":testIamPermissions", test_iam_permissions, SERVICE),
        Route("GET", one + "/revisions", list_revisions, SERVICE),
        Route("GET", one + "/revisions/{revision}", get_revision, SERVICE),
        Route("DELETE", one + "/revisions/{revision}", delete_revision, SERVICE),
        Route("POST", "/_emulator/outage", outage),
        Route("GET", "/_emulator/cloud_run/instances", instances),
    ]
