"""The gate every gated route passes: 403 SERVICE_DISABLED unless the API is enabled."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.gcp.errors import GoogleApiError
from emulator.gcp.projects import project_number
from emulator.gcp.service_usage.backend import ServiceUsageBackend
from emulator.gcp.service_usage.spec import SERVICE_TITLES

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


def require_enabled(emulator: Emulator, project: str, service_name: str) -> None:
    """403 SERVICE_DISABLED, as Google sends it, unless the API is enabled and has propagated."""
    su = emulator.get(ServiceUsageBackend)
    project_id = su.resolve_project(project)
    enabled_at = su.enabled_at(project_id, service_name)
    delay = emulator.config.propagation_delay_seconds
    if enabled_at is not None and emulator.clock() >= enabled_at + delay:
        return
    number = project_number(project_id)
    title = SERVICE_TITLES.get(service_name, service_name)
    url = f"https://console.developers.google.com/apis/api/{service_name}/overview?project={number}"
    message = (
        f"{title} has not been used in project {number} before or it is disabled. "
        f"Enable it by visiting {url} then retry. If you enabled this API recently, wait a few "
        "minutes for the action to propagate to our systems and retry."
    )
    raise GoogleApiError(
        403,
        "PERMISSION_DENIED",
        message,
        reason="SERVICE_DISABLED",
        metadata={
            "service": service_name,
            "consumer": f"projects/{number}",
            "activationUrl": url,
            "serviceTitle": title,
            "containerInfo": str(number),
        },
        extra_details=[
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Google developers console API activation", "url": url}],
            },
        ],
    )
