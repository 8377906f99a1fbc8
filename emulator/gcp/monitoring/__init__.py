"""Cloud Monitoring v3: `projects.timeSeries.list` for `run.googleapis.com/request_count` and
`run.googleapis.com/container/billable_instance_time`.

Files: `spec` (filter, interval and request_count shapes, pure), `billable` (billable instance
time from the Cloud Run instances' accounting, pure), `aggregation` (`aggregation.*`: align,
reduce; pure), `backend` (reads the emulated Cloud Run services, no HTTP), `routes`.

Not gated on enablement: monitoring.googleapis.com is among the APIs Google enables by default in
every new project (https://cloud.google.com/service-usage/docs/enabled-service#default).
"""

from emulator.gcp.monitoring.backend import MonitoringBackend
from emulator.gcp.monitoring.billable import BILLABLE_INSTANCE_TIME
from emulator.gcp.monitoring.routes import routes
from emulator.gcp.monitoring.spec import REQUEST_COUNT, SERVICE

__all__ = ["BILLABLE_INSTANCE_TIME", "REQUEST_COUNT", "SERVICE", "MonitoringBackend", "routes"]
