"""Service Usage v1: which APIs are enabled, per project (the gate every other API checks).

`spec` (names, titles, limits), `backend` (state and operations, no HTTP), `routes`.
Cloud Storage is served by fake-gcs-server and is not gated.
"""

from emulator.gcp.service_usage.backend import ServiceUsageBackend
from emulator.gcp.service_usage.routes import routes
from emulator.gcp.service_usage.spec import SERVICE, SERVICE_TITLES

__all__ = ["SERVICE", "SERVICE_TITLES", "ServiceUsageBackend", "routes"]
