"""Cloud Monitoring v3 routes (discovery document monitoring.v3, `projects.timeSeries.list`):

  GET /v3/projects/{project}/timeSeries?filter=...&interval.startTime=...&interval.endTime=...

`aggregation.*` (alignmentPeriod, perSeriesAligner, crossSeriesReducer, groupByFields) is applied
as `aggregation` says; what it does not implement is refused, never ignored, so a caller never
mistakes raw points for aligned ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emulator.gcp.errors import invalid_argument
from emulator.gcp.monitoring.aggregation import aggregate, parse_aggregation
from emulator.gcp.monitoring.backend import MonitoringBackend
from emulator.gcp.monitoring.spec import parse_filter, parse_time
from emulator.gcp.routing import Call, Route

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


def list_time_series(call: Call) -> dict[str, Any]:
    query = call.query
    clauses = parse_filter(query.get("filter", ""))
    if "interval.endTime" not in query:
        raise invalid_argument("Field interval.endTime had an invalid value: must be set.")
    end = parse_time(query["interval.endTime"], "interval.end_time")
    start = parse_time(query.get("interval.startTime", query["interval.endTime"]), "start_time")
    aggregation = parse_aggregation(query, query.getlist("aggregation.groupByFields"))
    backend = call.emulator.get(MonitoringBackend)
    raw = backend.list_time_series(call.param("project"), clauses, start, end)
    found = aggregate(raw, aggregation, start, end)
    return {"timeSeries": found} if found else {}


def routes(emulator: Emulator) -> list[Route]:
    return [Route("GET", "/v3/projects/{project}/timeSeries", list_time_series)]
