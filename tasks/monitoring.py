"""Cloud Monitoring v3: how many requests a Cloud Run service answered over a window.

``projects.timeSeries.list`` over REST (google-cloud-monitoring is not in requirements.lock) with
the filter ``metric.type="run.googleapis.com/request_count" AND resource.labels.service_name=...``
(metric list: https://cloud.google.com/monitoring/api/metrics_gcp_p_z#gcp-run; a DELTA INT64
metric on ``cloud_run_revision``). Raw points are summed here, so no aggregation is asked for.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import requests
from google.api_core import exceptions as gexc

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.errors import google_errors
from tasks.retries import transient_retry

REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_TIMEOUT_SECONDS = 30.0


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def count_requests(
    cloud: GoogleCloud, region: str, service: str, start: dt.datetime, end: dt.datetime
) -> int:
    """Requests the service answered in (start, end], every revision and response code."""
    session, base = clients.monitoring_session(cloud)
    url = f"{base}/v3/projects/{cloud.project}/timeSeries"
    params: dict[str, Any] = {
        "filter": f'metric.type="{REQUEST_COUNT}" AND resource.labels.service_name="{service}" '
        f'AND resource.labels.location="{region}"',
        "interval.startTime": _rfc3339(start),
        "interval.endTime": _rfc3339(end),
    }

    def page(token: str) -> dict[str, Any]:
        response = session.get(
            url,
            params={**params, "pageToken": token} if token else params,
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        if response.status_code >= 400:
            raise gexc.from_http_response(response)
        body: dict[str, Any] = response.json()
        return body

    total, token = 0, ""
    try:
        with google_errors(f"read the request count of Cloud Run service {service}"):
            while True:
                body = transient_retry(cloud)(page)(token)
                for series in body.get("timeSeries", []):
                    total += sum(int(p["value"].get("int64Value", 0)) for p in series["points"])
                token = body.get("nextPageToken", "")
                if not token:
                    return total
    except requests.RequestException as exc:
        raise gexc.ServiceUnavailable(f"Cloud Monitoring unreachable: {exc}") from exc
    finally:
        session.close()
