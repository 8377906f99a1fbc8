"""Cloud Monitoring v3: `projects.timeSeries.list` for `run.googleapis.com/request_count`.

Files: `spec` (filter, interval and time-series shapes, pure), `backend` (reads the emulated
Cloud Run services' ingress counts, no HTTP), `routes`.

Not gated on enablement: monitoring.googleapis.com is among the APIs Google enables by default in
every new project (https://cloud.google.com/service-usage/docs/enabled-service#default).
"""

from emulator.gcp.monitoring.backend import MonitoringBackend
from emulator.gcp.monitoring.routes import routes
from emulator.gcp.monitoring.spec import REQUEST_COUNT, SERVICE

__all__ = ["REQUEST_COUNT", "SERVICE", "MonitoringBackend", "routes"]
