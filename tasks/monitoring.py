"""Cloud Monitoring v3 over REST (``projects.timeSeries.list``): how many requests a Cloud Run
service answered, and what Cloud Run billed for it, over a window.

Google's metric list (https://cloud.google.com/monitoring/api/metrics_gcp_p_z#gcp-run):
``run.googleapis.com/request_count`` is DELTA INT64; ``run.googleapis.com/container/
billable_instance_time`` is "Billable time aggregated across all container instances", DELTA,
DOUBLE, unit "s"; both on the ``cloud_run_revision`` resource, sampled every 60 s (a sample may
take up to 180 s more to be visible).

The calls go through google-api-python-client, built from the discovery document it ships
(``tasks.clients.monitoring_resource``): google-cloud-monitoring has gRPC transports only. Each
answer is read into google-cloud-monitoring's own ``ListTimeSeriesResponse`` (unknown fields
refused), so a shape Google would not send fails here, not in a sum.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import monitoring_v3

from tasks.clients import GoogleCloud, monitoring_resource
from tasks.errors import google_errors
from tasks.retries import transient_retry

REQUEST_COUNT = "run.googleapis.com/request_count"
BILLABLE_INSTANCE_TIME = "run.googleapis.com/container/billable_instance_time"
# Google's smallest alignment period is 60 s (Aggregation.alignment_period); windows round up.
MIN_ALIGNMENT_SECONDS = 60
RETRY_SECONDS = 60.0  # neither figure is worth holding a flow for longer


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _query(
    cloud: GoogleCloud, metric: str, region: str, service: str, start: dt.datetime, end: dt.datetime
) -> dict[str, Any]:
    return {
        "name": f"projects/{cloud.project}",
        "filter": f'metric.type="{metric}" AND resource.type="cloud_run_revision" '
        f'AND resource.labels.service_name="{service}" AND resource.labels.location="{region}"',
        "interval_startTime": _rfc3339(start),
        "interval_endTime": _rfc3339(end),
    }


def count_requests(
    cloud: GoogleCloud, region: str, service: str, start: dt.datetime, end: dt.datetime
) -> int:
    """Requests the service answered in (start, end], every revision and response code (raw
    points, summed here)."""
    query = _query(cloud, REQUEST_COUNT, region, service, start, end)
    with google_errors(f"read the request count of Cloud Run service {service}"):
        return int(_sum_points(cloud, query, "int64_value"))


def billable_instance_seconds(
    cloud: GoogleCloud, region: str, service: str, start: dt.datetime, end: dt.datetime
) -> float:
    """Billable instance-seconds of every revision of ``service`` in (start, end]. The server
    sums: one alignment period covering the window (ALIGN_SUM) and the revisions together
    (REDUCE_SUM), so one point comes back; every point returned is added anyway."""
    seconds = max(MIN_ALIGNMENT_SECONDS, (end - start).total_seconds())
    period = MIN_ALIGNMENT_SECONDS * math.ceil(seconds / MIN_ALIGNMENT_SECONDS)
    query = {
        **_query(cloud, BILLABLE_INSTANCE_TIME, region, service, start, end),
        "aggregation_alignmentPeriod": f"{period}s",
        "aggregation_perSeriesAligner": "ALIGN_SUM",
        "aggregation_crossSeriesReducer": "REDUCE_SUM",
        "aggregation_groupByFields": ["resource.labels.service_name"],
    }
    with google_errors(f"read the billable instance time of Cloud Run service {service}"):
        return float(_sum_points(cloud, query, "double_value"))


def _sum_points(cloud: GoogleCloud, query: dict[str, Any], value_field: str) -> Any:
    """Every point of every series on every page, summed (``value_field``: the TypedValue's)."""
    return sum(
        getattr(p.value, value_field)
        for page in _pages(cloud, query)
        for s in page.time_series
        for p in s.points
    )


def _pages(
    cloud: GoogleCloud, query: dict[str, Any]
) -> Iterator[monitoring_v3.ListTimeSeriesResponse]:
    series = monitoring_resource(cloud).projects().timeSeries()
    retry = transient_retry(cloud, timeout=RETRY_SECONDS)
    token = ""
    while True:
        page = retry(_page)(series, {**query, "pageToken": token} if token else query)
        yield page
        token = page.next_page_token
        if not token:
            return


def _page(series: Any, query: dict[str, Any]) -> monitoring_v3.ListTimeSeriesResponse:
    """One page, as google-cloud-monitoring's message; HTTP errors as google.api_core's."""
    from googleapiclient.errors import HttpError

    try:
        body = series.list(**query).execute()
    except HttpError as exc:
        raise gexc.from_http_status(exc.status_code, exc.reason or str(exc)) from exc
    except OSError as exc:  # connection refused, reset: transient
        raise gexc.ServiceUnavailable(f"Cloud Monitoring unreachable: {exc}") from exc
    return monitoring_v3.ListTimeSeriesResponse.from_json(
        json.dumps(body), ignore_unknown_fields=False
    )
