"""Cloud Monitoring's `run.googleapis.com/container/billable_instance_time` from the emulated
Cloud Run instances (emulator/gcp/cloud_run/instances.py). Pure.

Google's metric list (https://cloud.google.com/monitoring/api/metrics_gcp_p_z#gcp-run):
"Billable instance time: Billable time aggregated across all container instances", metric kind
DELTA, value type DOUBLE, unit "s", monitored resource `cloud_run_revision` (labels project_id,
service_name, revision_name, location, configuration_name), no metric labels; "Sampled every 60
seconds". One series per revision; one point per closed sample period (`monitoring_sample_seconds`,
60 by default, aligned on the epoch) holding the billable seconds of that period, newest first;
periods with nothing billed have no point. A period that has not ended yet is not reported (Google
also shows a sample only after it, up to 180 s later; the emulator adds no such delay).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from emulator.gcp.cloud_run.backend import ServiceInstances
from emulator.gcp.cloud_run.instances import overlap
from emulator.gcp.protojson import rfc3339

BILLABLE_INSTANCE_TIME = "run.googleapis.com/container/billable_instance_time"
RESOURCE_TYPE = "cloud_run_revision"


def billable_series(
    services: Iterable[ServiceInstances], sample_seconds: float, start: float, end: float
) -> list[dict[str, Any]]:
    """Every revision's series with its points whose end is in (start, end]."""
    series = []
    for found in services:
        end_here = min(end, found.now)  # only periods that have ended
        revisions = sorted({i.revision for i in found.instances if i.revision})
        for revision in revisions:
            mine = [i for i in found.instances if i.revision == revision]
            spans = [span for i in mine for span in i.spans(found.now)]
            if not spans:
                continue
            # The periods ending in (start, end] that can hold billed time.
            first = math.floor(max(start, min(a for a, _ in spans)) / sample_seconds) + 1
            last = math.floor(end_here / sample_seconds)
            points = []
            for k in range(last, first - 1, -1):
                hi = k * sample_seconds
                billed = overlap(spans, hi - sample_seconds, hi)
                if billed > 0:
                    points.append(_point(hi - sample_seconds, hi, billed))
            if points:
                series.append(_series(found, revision, points))
    return series


def _point(start: float, end: float, seconds: float) -> dict[str, Any]:
    return {
        "interval": {"startTime": rfc3339(start), "endTime": rfc3339(end)},
        "value": {"doubleValue": round(seconds, 6)},
    }


def _series(found: ServiceInstances, revision: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metric": {"type": BILLABLE_INSTANCE_TIME},
        "resource": {
            "type": RESOURCE_TYPE,
            "labels": {
                "project_id": found.project,
                "service_name": found.service,
                "revision_name": revision,
                "location": found.location,
                "configuration_name": found.service,
            },
        },
        "metricKind": "DELTA",
        "valueType": "DOUBLE",
        "unit": "s",
        "points": points,
    }


def flat_labels(series: dict[str, Any]) -> dict[str, str]:
    """The filterable fields of a series: `metric.type`, `resource.type`, `resource.labels.x`,
    `metric.labels.x`."""
    labels = {
        "metric.type": series["metric"]["type"],
        "resource.type": series["resource"]["type"],
    }
    for part in ("metric", "resource"):
        for key, value in series[part].get("labels", {}).items():
            labels[f"{part}.labels.{key}"] = value
    return labels
