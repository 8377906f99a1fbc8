"""Cloud Monitoring's billable_instance_time as the emulator serves it (pure): one DELTA DOUBLE
series per revision, one point per closed sample period, and `aggregation.*` aligning and
reducing them so that the sum over a window equals the instances' own billable time."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
from google.cloud import monitoring_v3

from emulator.gcp.cloud_run.backend import ServiceInstances
from emulator.gcp.cloud_run.instances import Instance
from emulator.gcp.errors import GoogleApiError
from emulator.gcp.monitoring.aggregation import aggregate, parse_aggregation
from emulator.gcp.monitoring.billable import billable_series, flat_labels
from tasks import monitoring
from tasks.clients import GoogleCloud
from tests.gcp.conftest import PROJECT, LocalGcp
from tests.gcp.discovery import Exchange, Judge

T0 = 1_800_000_000.0  # a multiple of 60: periods start on it


def found(now: float) -> ServiceInstances:
    a = Instance("svc-00001-abc", 1, T0 + 10, T0 + 15, True, stopped_at=T0 + 130)
    b = Instance("svc-00001-abc", 2, T0 + 50, T0 + 55, True, stopped_at=T0 + 110)
    c = Instance("svc-00002-def", 3, T0 + 100, T0 + 100, True, in_flight=1, busy=[[T0 + 100, -1]])
    return ServiceInstances("p", "us-central1", "svc", now, [a, b, c])


def total(series: list[dict[str, object]]) -> float:
    response = monitoring_v3.ListTimeSeriesResponse.from_json(
        json.dumps({"timeSeries": series}), ignore_unknown_fields=False
    )  # Google's own message type reads what the emulator sends
    return sum(p.value.double_value for s in response.time_series for p in s.points)


def test_one_series_per_revision_one_point_per_closed_period() -> None:
    series = billable_series([found(T0 + 150)], 60.0, T0 - 600, T0 + 600)
    assert [s["resource"]["labels"]["revision_name"] for s in series] == [
        "svc-00001-abc",
        "svc-00002-def",
    ]
    first = series[0]
    assert (first["metricKind"], first["valueType"], first["unit"]) == ("DELTA", "DOUBLE", "s")
    assert first["resource"]["type"] == "cloud_run_revision"
    assert flat_labels(first)["resource.labels.configuration_name"] == "svc"
    # Instance 1: 10..130, instance 2: 50..110 → periods [0,60): 50+10, [60,120): 60+50,
    # [120,180) is not over at T0+150: not reported. Newest first.
    values = [p["value"]["doubleValue"] for p in first["points"]]
    assert values == [110.0, 60.0]
    assert total(series) == 110.0 + 60.0 + 20.0  # revision 2: 100..120 closed


def test_interval_keeps_points_ending_inside_it() -> None:
    series = billable_series([found(T0 + 400)], 60.0, T0 + 60, T0 + 120)
    assert [p["interval"]["endTime"] for s in series for p in s["points"]] == [
        "2027-01-15T08:02:00.000000Z",
        "2027-01-15T08:02:00.000000Z",
    ]


def test_sum_aligned_and_reduced_over_the_window_equals_the_instances_billable_time() -> None:
    services = [found(T0 + 400)]
    raw = billable_series(services, 1.0, T0, T0 + 400)
    query = {
        "aggregation.alignmentPeriod": "420s",
        "aggregation.perSeriesAligner": "ALIGN_SUM",
        "aggregation.crossSeriesReducer": "4",  # REDUCE_SUM by number (enum-encoding=int)
    }
    agg = parse_aggregation(query, ["resource.labels.service_name"])
    out = aggregate(raw, agg, T0, T0 + 400)
    assert len(out) == 1 and len(out[0]["points"]) == 1
    assert out[0]["resource"]["labels"] == {"service_name": "svc"}
    expected = (130 - 10) + (110 - 50) + (400 - 100)  # instance 3 still up at T0+400
    assert total(out) == pytest.approx(expected)
    assert total(raw) == pytest.approx(expected)


@pytest.mark.parametrize(
    "query",
    [
        {"aggregation.perSeriesAligner": "ALIGN_SUM"},  # no period
        {"aggregation.perSeriesAligner": "ALIGN_SUM", "aggregation.alignmentPeriod": "30s"},
        {"aggregation.crossSeriesReducer": "REDUCE_SUM", "aggregation.alignmentPeriod": "60s"},
        {"aggregation.perSeriesAligner": "ALIGN_PERCENTILE_99"},
        {"secondaryAggregation.perSeriesAligner": "ALIGN_SUM"},
    ],
)
def test_aggregation_google_refuses_is_invalid_argument(query: dict[str, str]) -> None:
    with pytest.raises(GoogleApiError) as caught:
        parse_aggregation(query, [])
    assert caught.value.status == "INVALID_ARGUMENT"


def test_tasks_monitoring_reads_the_billed_seconds_through_the_rest_client(
    local_gcp: LocalGcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tasks.monitoring's discovery-built REST client, its aggregation sent and applied, the
    answer read as Google's message; every exchange judged by the monitoring.v3 document."""
    now = T0 + 400
    cloud_run = local_gcp.emulator.cloud_run
    monkeypatch.setattr(cloud_run, "service_instances", lambda project=None: [found(now)])
    httpx.delete(f"{local_gcp.base_url}/_emulator/requests").raise_for_status()
    cloud = GoogleCloud(local_gcp.credentials(), PROJECT, local_gcp.base_url)
    start, end = (dt.datetime.fromtimestamp(t, dt.UTC) for t in (T0, now))
    seconds = monitoring.billable_instance_seconds(cloud, "us-central1", "svc", start, end)
    # 60 s samples: instance 3's last 40 s are in the period [T0+360, T0+420), not over yet.
    assert seconds == pytest.approx((130 - 10) + (110 - 50) + (360 - 100))
    assert monitoring.billable_instance_seconds(cloud, "europe-west1", "svc", start, end) == 0

    log = httpx.get(f"{local_gcp.base_url}/_emulator/requests").json()["requests"]
    recorded = [
        Exchange(e["method"], e["path"], e["query"], e["request"], e["status"], e["response"])
        for e in log
    ]
    assert [e.status for e in recorded] == [200, 200]
    assert "aggregation.perSeriesAligner" in recorded[0].query
    assert [v for e in recorded for v in Judge().violations(e)] == []
