"""Service Usage state: enabled services per project id, with the time each was enabled (for
propagation). Knows nothing of HTTP; creates its own long-running operations."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from google.cloud import service_usage_v1 as su

from emulator.gcp.errors import invalid_argument
from emulator.gcp.projects import project_number
from emulator.gcp.protojson import JsonMessage
from emulator.gcp.service_usage.spec import (
    ALWAYS_ENABLED,
    MAX_BATCH_ENABLE,
    NOOP_OPERATION,
    SERVICE_TITLES,
    not_found_services,
    unknown_services,
)

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


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

    # -- state changes -----------------------------------------------------------------------

    def _check_names(self, services: list[str]) -> None:
        unknown = unknown_services(services)
        if unknown:
            raise not_found_services(unknown)

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

    # -- the API's methods: each returns its long-running operation --------------------------

    def batch_enable_services(self, project: str, service_ids: list[str]) -> dict[str, Any]:
        services, changed = self.enable(project, service_ids)
        response = su.BatchEnableServicesResponse(services=services)
        return self._operation(project, service_ids, response, changed)

    def enable_service(self, project: str, service: str) -> dict[str, Any]:
        (enabled,), changed = self.enable(project, [service])
        response = su.EnableServiceResponse(service=enabled)
        return self._operation(project, [enabled.config.name], response, changed)

    def disable_service(self, project: str, service: str) -> dict[str, Any]:
        disabled, changed = self.disable(project, service)
        response = su.DisableServiceResponse(service=disabled)
        return self._operation(project, [disabled.config.name], response, changed)

    def _operation(
        self, project: str, services: list[str], response: JsonMessage, changed: bool
    ) -> dict[str, Any]:
        """`operations/acat.p2-<number>-<uuid>`, or Google's `noop.DONE_OPERATION` (with a
        response) when nothing changes."""
        number = project_number(self.resolve_project(project))
        metadata = su.OperationMetadata(
            resource_names=[f"services/{s}/projectSettings/{number}" for s in services]
        )
        if not changed:
            return self.emulator.operations.create_done(NOOP_OPERATION, None, response)
        name = f"operations/acat.p2-{number}-{uuid.uuid4()}"
        return self.emulator.start_operation(name, metadata, lambda: (response, None))

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"enabled": {p: dict(s) for p, s in self._enabled.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self._enabled = {p: dict(s) for p, s in state.get("enabled", {}).items()}

    def close(self) -> None:
        pass
