"""Service Usage v1: which APIs are enabled, per project (the gate every other API checks).

Routes (`google/cloud/service_usage_v1/.../rest_base.py`):
  POST /v1/projects/{project}/services:batchEnable      -> LRO(BatchEnableServicesResponse)
  POST /v1/projects/{project}/services/{service}:enable -> LRO(EnableServiceResponse)
  POST /v1/projects/{project}/services/{service}:disable -> LRO(DisableServiceResponse)
  GET  /v1/projects/{project}/services/{service}        -> Service
  GET  /v1/projects/{project}/services:batchGet?names=  -> BatchGetServicesResponse
  GET  /v1/projects/{project}/services?filter=state:ENABLED -> ListServicesResponse
Operations: `operations/acat.p2-<number>-<uuid>`, or `operations/noop.DONE_OPERATION` (with a
response) when nothing changes. Cloud Storage is served by fake-gcs-server and is not gated.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from google.cloud import service_usage_v1 as su

from emulator.gcp.core import (
    SERVICE_TITLES,
    Call,
    GoogleApiError,
    Route,
    invalid_argument,
    project_number,
)

if TYPE_CHECKING:
    from emulator.gcp.core import Emulator

SERVICE = "serviceusage.googleapis.com"  # always enabled; routes still check tokens
MAX_BATCH_ENABLE = 20
MAX_BATCH_GET = 30
NOOP_OPERATION = "operations/noop.DONE_OPERATION"
ALWAYS_ENABLED = frozenset({"serviceusage.googleapis.com"})
_SERVICE_RE = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z0-9-]+)*\.googleapis\.com$")


def _not_found_services(names: list[str]) -> GoogleApiError:
    joined = ", ".join(names)
    return GoogleApiError(
        403,
        "PERMISSION_DENIED",
        f"Not found or permission denied for service(s): {joined}.",
        reason="SERVICE_CONFIG_NOT_FOUND_OR_PERMISSION_DENIED",
        domain="serviceusage.googleapis.com",
        metadata={"services": joined},
    )


class ServiceUsageBackend:
    """Enabled services per project id, with the time each was enabled (for propagation)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._enabled: dict[str, dict[str, float]] = {}

    # -- queries used by every API --------------------------------------------------------

    def resolve_project(self, project: str) -> str:
        """A project id from an id or a number (numbers of known projects map back to ids)."""
        if not project.isdigit():
            return project
        for known in {self.emulator.config.project, *self._enabled}:
            if project_number(known) == int(project):
                return known
        return project

    def enabled_at(self, project: str, service: str) -> float | None:
        if service in ALWAYS_ENABLED:
            return 0.0
        return self._enabled.get(self.resolve_project(project), {}).get(service)

    # -- the API ---------------------------------------------------------------------------

    def _check_names(self, services: list[str]) -> None:
        unknown = [s for s in services if s not in SERVICE_TITLES or not _SERVICE_RE.match(s)]
        if unknown:
            raise _not_found_services(unknown)

    def service(self, project: str, service: str) -> su.Service:
        self._check_names([service])
        number = project_number(self.resolve_project(project))
        enabled = self.enabled_at(project, service) is not None
        return su.Service(
            name=f"projects/{number}/services/{service}",
            parent=f"projects/{number}",
            config=su.ServiceConfig(name=service, title=SERVICE_TITLES[service]),
            state=su.State.ENABLED if enabled else su.State.DISABLED,
        )

    def enable(self, project: str, services: list[str]) -> tuple[list[su.Service], bool]:
        """Enable services; returns their new state and whether anything changed."""
        if not services:
            raise invalid_argument("The list of services to enable is empty.")
        if len(services) > MAX_BATCH_ENABLE:
            raise invalid_argument(
                f"Too many services in the request: {len(services)} "
                f"(at most {MAX_BATCH_ENABLE} services can be enabled in one call)."
            )
        self._check_names(services)
        project_id = self.resolve_project(project)
        changed = False
        for name in services:
            if self.enabled_at(project_id, name) is None:
                self._enabled.setdefault(project_id, {})[name] = self.emulator.clock()
                changed = True
        return [self.service(project_id, s) for s in services], changed

    def disable(self, project: str, service: str) -> tuple[su.Service, bool]:
        self._check_names([service])
        if service in ALWAYS_ENABLED:
            raise invalid_argument(f"Service {service} cannot be disabled.")
        project_id = self.resolve_project(project)
        changed = self._enabled.get(project_id, {}).pop(service, None) is not None
        return self.service(project_id, service), changed

    def list_enabled(self, project: str) -> list[su.Service]:
        project_id = self.resolve_project(project)
        names = sorted(ALWAYS_ENABLED | set(self._enabled.get(project_id, {})))
        return [self.service(project_id, n) for n in names]

    def list_all(self, project: str) -> list[su.Service]:
        return [self.service(project, n) for n in sorted(SERVICE_TITLES)]

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"enabled": {p: dict(s) for p, s in self._enabled.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self._enabled = {p: dict(s) for p, s in state.get("enabled", {}).items()}

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------


def _operation(
    emulator: Emulator, project: str, services: list[str], response: Any, changed: bool
) -> dict[str, Any]:
    number = project_number(emulator.service_usage.resolve_project(project))
    metadata = su.OperationMetadata(
        resource_names=[f"services/{s}/projectSettings/{number}" for s in services]
    )
    if not changed:
        return emulator.operations.create_done(NOOP_OPERATION, None, response)
    name = f"operations/acat.p2-{number}-{uuid.uuid4()}"
    return emulator.operations.create(
        name,
        metadata,
        resolve=lambda: (response, None),
        polls_until_done=emulator.config.operation_polls,
    )


def routes(emulator: Emulator) -> list[Route]:
    def backend() -> ServiceUsageBackend:
        return emulator.service_usage  # looked up per call: reset() rebuilds backends

    def batch_enable(call: Call) -> dict[str, Any]:
        ids = call.body.get("serviceIds") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise invalid_argument("serviceIds must be a list of service names.")
        services, changed = backend().enable(call.param("project"), ids)
        response = su.BatchEnableServicesResponse(services=services)
        return _operation(call.emulator, call.param("project"), ids, response, changed)

    def enable(call: Call) -> dict[str, Any]:
        (service,), changed = backend().enable(call.param("project"), [call.param("service")])
        response = su.EnableServiceResponse(service=service)
        return _operation(
            call.emulator, call.param("project"), [service.config.name], response, changed
        )

    def disable(call: Call) -> dict[str, Any]:
        service, changed = backend().disable(call.param("project"), call.param("service"))
        response = su.DisableServiceResponse(service=service)
        return _operation(
            call.emulator, call.param("project"), [service.config.name], response, changed
        )

    def get(call: Call) -> su.Service:
        return backend().service(call.param("project"), call.param("service"))

    def batch_get(call: Call) -> su.BatchGetServicesResponse:
        names = call.query.getlist("names")
        if not names:
            raise invalid_argument("names must not be empty.")
        if len(names) > MAX_BATCH_GET:
            raise invalid_argument(f"At most {MAX_BATCH_GET} names can be requested at once.")
        parent = f"projects/{call.param('project')}"
        services = []
        for name in names:
            head, sep, service = name.rpartition("/services/")
            if not sep or backend().resolve_project(head.removeprefix("projects/")) != (
                backend().resolve_project(call.param("project"))
            ):
                raise invalid_argument(f"Service name {name!r} is not under {parent}.")
            services.append(backend().service(call.param("project"), service))
        return su.BatchGetServicesResponse(services=services)

    def list_services(call: Call) -> su.ListServicesResponse:
        filter_ = call.query.get("filter", "").replace(" ", "")
        project = call.param("project")
        if filter_ in ("", "state:ENABLED", "state:DISABLED"):
            services = backend().list_all(project)
            if filter_:
                want = (
                    su.State.ENABLED
                    if filter_.endswith("ENABLED") and "DIS" not in filter_
                    else (su.State.DISABLED)
                )
                services = [s for s in services if s.state == want]
            return su.ListServicesResponse(services=services)
        raise invalid_argument(
            f"Unsupported filter {filter_!r}: use state:ENABLED or state:DISABLED."
        )

    base = "/v1/projects/{project}/services"
    return [
        Route("POST", base + ":batchEnable", batch_enable, SERVICE),
        Route("GET", base + ":batchGet", batch_get, SERVICE),
        Route("GET", base, list_services, SERVICE),
        Route("POST", base + "/{service}:enable", enable, SERVICE),
        Route("POST", base + "/{service}:disable", disable, SERVICE),
        Route("GET", base + "/{service}", get, SERVICE),
    ]
