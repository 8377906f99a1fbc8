"""Cloud Monitoring state: none of its own. The request counts are the emulated Cloud Run
services' (each ingress records what it answered), the billable instance time their instances'
(cloud_run.instances); this backend reads them. No HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emulator.gcp.cloud_run import CloudRunBackend
from emulator.gcp.monitoring.billable import BILLABLE_INSTANCE_TIME, billable_series, flat_labels
from emulator.gcp.monitoring.spec import REQUEST_COUNT, request_count_series

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


class MonitoringBackend:
    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator

    def list_time_series(
        self, project: str, clauses: dict[str, str], start: float, end: float
    ) -> list[dict[str, Any]]:
        """The series of `clauses["metric.type"]` in (start, end]: request_count and
        container/billable_instance_time exist."""
        if clauses["metric.type"] == BILLABLE_INSTANCE_TIME:
            found = self._emulator.get(CloudRunBackend).service_instances(project)
            sample = self._emulator.config.monitoring_sample_seconds
            return [
                series
                for series in billable_series(found, sample, start, end)
                if all(flat_labels(series).get(k) == v for k, v in clauses.items())
            ]
        if clauses["metric.type"] != REQUEST_COUNT:
            return []
        answered = self._emulator.get(CloudRunBackend).answered_requests(project)
        return request_count_series(project, answered, clauses, start, end)

    # -- registry protocol: the counts live with the services' ingresses, not here -------------

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
