"""Service Usage v1 routes (`google/cloud/service_usage_v1/.../rest_base.py`):

POST /v1/projects/{project}/services:batchEnable      -> LRO(BatchEnableServicesResponse)
POST /v1/projects/{project}/services/{service}:enable -> LRO(EnableServiceResponse)
POST /v1/projects/{project}/services/{service}:disable -> LRO(DisableServiceResponse)
GET  /v1/projects/{project}/services/{service}        -> Service
GET  /v1/projects/{project}/services:batchGet?names=  -> BatchGetServicesResponse
GET  /v1/projects/{project}/services?filter=state:ENABLED -> ListServicesResponse
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.cloud import service_usage_v1 as su

from emulator.gcp.errors import invalid_argument
from emulator.gcp.routing import Call, Route
from emulator.gcp.service_usage.backend import ServiceUsageBackend
from emulator.gcp.service_usage.spec import MAX_BATCH_GET, SERVICE

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

STATE_FILTERS = {"": None, "state:ENABLED": su.State.ENABLED, "state:DISABLED": su.State.DISABLED}


def _backend(call: Call) -> ServiceUsageBackend:
    return call.emulator.get(ServiceUsageBackend)


def batch_enable(call: Call) -> dict[str, Any]:
    ids = call.body.get("serviceIds") or []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise invalid_argument("serviceIds must be a list of service names.")
    return _backend(call).batch_enable_services(call.param("project"), ids)


def enable(call: Call) -> dict[str, Any]:
    return _backend(call).enable_service(call.param("project"), call.param("service"))


def disable(call: Call) -> dict[str, Any]:
    return _backend(call).disable_service(call.param("project"), call.param("service"))


def get(call: Call) -> su.Service:
    return _backend(call).service(call.param("project"), call.param("service"))


def batch_get(call: Call) -> su.BatchGetServicesResponse:
    names = call.query.getlist("names")
    if not names:
        raise invalid_argument("names must not be empty.")
    if len(names) > MAX_BATCH_GET:
        raise invalid_argument(f"At most {MAX_BATCH_GET} names can be requested at once.")
    backend, project = _backend(call), call.param("project")
    services = []
    for name in names:
        head, sep, service = name.rpartition("/services/")
        if not sep or backend.resolve_project(head.removeprefix("projects/")) != (
            backend.resolve_project(project)
        ):
            raise invalid_argument(f"Service name {name!r} is not under projects/{project}.")
        services.append(backend.service(project, service))
    return su.BatchGetServicesResponse(services=services)


def list_services(call: Call) -> su.ListServicesResponse:
    filter_ = call.query.get("filter", "").replace(" ", "")
    if filter_ not in STATE_FILTERS:
        raise invalid_argument(
            f"Unsupported filter {filter_!r}: use state:ENABLED or state:DISABLED."
        )
    services = _backend(call).list_all(call.param("project"))
    want = STATE_FILTERS[filter_]
    if want is not None:
        services = [s for s in services if s.state == want]
    return su.ListServicesResponse(services=services)


def routes(emulator: Emulator) -> list[Route]:
    base = "/v1/projects/{project}/services"
    return [
        Route("POST", base + ":batchEnable", batch_enable, SERVICE),
        Route("GET", base + ":batchGet", batch_get, SERVICE),
        Route("GET", base, list_services, SERVICE),
        Route("POST", base + "/{service}:enable", enable, SERVICE),
        Route("POST", base + "/{service}:disable", disable, SERVICE),
        Route("GET", base + "/{service}", get, SERVICE),
    ]
