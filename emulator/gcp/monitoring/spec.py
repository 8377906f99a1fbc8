"""Cloud Monitoring v3 time series for `run.googleapis.com/request_count`. Pure.

Shapes follow the discovery document monitoring.v3 (google-api-python-client:
`projects.timeSeries.list`, schemas `ListTimeSeriesResponse`, `TimeSeries`, `Point`) and Google's
metric list (https://cloud.google.com/monitoring/api/metrics_gcp_p_z#gcp-run): `request_count` is
a DELTA INT64 metric on the `cloud_run_revision` resource (labels project_id, service_name,
revision_name, location, configuration_name), metric labels `response_code` and
`response_code_class`, sampled every 60 seconds.

Raw data only (no `aggregation`): one series per (service, revision, response code), one point
per 60-second sample holding that minute's count, newest first; a series with no point in the
interval is left out ("Only time series that contain data points in the specified interval are
included in the response", ListTimeSeriesRequest.interval). The filter takes `metric.type`
(required: Google requires a single metric type), `resource.type` and `resource.labels.*` /
`metric.labels.*` equalities joined by AND; anything else is INVALID_ARGUMENT.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from emulator.gcp.cloud_run import AnsweredRequests
from emulator.gcp.errors import invalid_argument
from emulator.gcp.protojson import rfc3339

SERVICE = "monitoring.googleapis.com"
REQUEST_COUNT = "run.googleapis.com/request_count"
RESOURCE_TYPE = "cloud_run_revision"
SAMPLE_SECONDS = 60
_CLAUSE = re.compile(r'^\s*([a-z_.]+)\s*=\s*"([^"]*)"\s*$')


def parse_filter(text: str) -> dict[str, str]:
    """`a.b = "x" AND c = "y"` → {"a.b": "x", "c": "y"}; only equalities joined by AND."""
    clauses: dict[str, str] = {}
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _CLAUSE.match(part)
        if match is None:
            raise invalid_argument(f"The provided filter is invalid: could not parse {part!r}.")
        clauses[match[1]] = match[2]
    if "metric.type" not in clauses:
        raise invalid_argument("The provided filter doesn't specify metric.type.")
    return clauses


def parse_time(text: str, what: str) -> float:
    """An RFC 3339 timestamp; Google's INVALID_ARGUMENT for a google.protobuf.Timestamp field."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        raise invalid_argument(
            f"Invalid value at '{what}' (type.googleapis.com/google.protobuf.Timestamp), \"{text}\""
        ) from None


def request_count_series(
    project: str,
    answered: Iterable[AnsweredRequests],
    clauses: dict[str, str],
    start: float,
    end: float,
) -> list[dict[str, Any]]:
    """The `TimeSeries` that `clauses` select in the interval (start, end]."""
    series = []
    for revision in answered:
        resource = {
            "project_id": project,
            "service_name": revision.service,
            "revision_name": revision.revision,
            "location": revision.location,
            "configuration_name": revision.service,
        }
        counts: Counter[tuple[int, int]] = Counter(
            (status, int(at // SAMPLE_SECONDS))
            for at, status in revision.requests
            if start < at <= end
        )
        for status in sorted({s for s, _ in counts}):
            metric = {"response_code": str(status), "response_code_class": f"{status // 100}xx"}
            labels = {
                **{f"resource.labels.{k}": v for k, v in resource.items()},
                **{f"metric.labels.{k}": v for k, v in metric.items()},
                "resource.type": RESOURCE_TYPE,
                "metric.type": REQUEST_COUNT,
            }
            if any(labels.get(k) != v for k, v in clauses.items()):
                continue
            minutes = sorted((m for s, m in counts if s == status), reverse=True)
            series.append(
                {
                    "metric": {"type": REQUEST_COUNT, "labels": metric},
                    "resource": {"type": RESOURCE_TYPE, "labels": resource},
                    "metricKind": "DELTA",
                    "valueType": "INT64",
                    "points": [_point(m, counts[(status, m)]) for m in minutes],
                }
            )
    return series


def _point(minute: int, count: int) -> dict[str, Any]:
    return {
        "interval": {
            "startTime": rfc3339(minute * SAMPLE_SECONDS),
            "endTime": rfc3339((minute + 1) * SAMPLE_SECONDS),
        },
        "value": {"int64Value": str(count)},
    }
