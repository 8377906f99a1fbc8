"""`projects.timeSeries.list`'s `aggregation.*`: align each series, then reduce across series.
Pure; works on `TimeSeries` JSON (the discovery document monitoring.v3's shapes).

Rules from Google's `Aggregation` reference (google/monitoring/v3/common.proto, as the client
libraries' docs quote it): the alignment period "must be at least 60 seconds. If a per-series
aligner other than ALIGN_NONE is specified, this field is required or an error is returned";
"If crossSeriesReducer is specified, then perSeriesAligner must be specified and not equal
ALIGN_NONE and alignmentPeriod must be specified; otherwise, an error is returned". Aligned
periods end at `interval.endTime` and step back by the period while they end after the start.
Enums arrive by name, or by number when a REST client asks for `enum-encoding=int`. The error
texts here are ours (Google's exact wording for these was not found); the status is Google's.

Aligners served: NONE, DELTA, SUM, RATE, MEAN, MIN, MAX, COUNT; reducers: NONE, SUM, MEAN, MIN,
MAX, COUNT. Anything else is INVALID_ARGUMENT naming it (not silently ignored).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from emulator.gcp.errors import invalid_argument
from emulator.gcp.protojson import rfc3339

ALIGNERS = {"ALIGN_NONE": 0, "ALIGN_DELTA": 1, "ALIGN_RATE": 2, "ALIGN_MIN": 10}
ALIGNERS |= {"ALIGN_MAX": 11, "ALIGN_MEAN": 12, "ALIGN_COUNT": 13, "ALIGN_SUM": 14}
REDUCERS = {"REDUCE_NONE": 0, "REDUCE_MEAN": 1, "REDUCE_MIN": 2, "REDUCE_MAX": 3}
REDUCERS |= {"REDUCE_SUM": 4, "REDUCE_COUNT": 6}
MIN_ALIGNMENT_SECONDS = 60.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")

Combine = Callable[[list[float]], float]
_COMBINE: dict[str, Combine] = {
    "SUM": sum,
    "DELTA": sum,
    "MEAN": lambda v: sum(v) / len(v),
    "MIN": min,
    "MAX": max,
    "COUNT": lambda v: float(len(v)),
}


@dataclass(frozen=True)
class Aggregation:
    period: float = 0.0
    aligner: str = "ALIGN_NONE"
    reducer: str = "REDUCE_NONE"
    group_by: tuple[str, ...] = field(default_factory=tuple)


def _enum(value: str | None, names: Mapping[str, int], what: str) -> str | None:
    if value is None:
        return None
    by_number = {str(n): name for name, n in names.items()}
    name = by_number.get(value, value)
    if name not in names:
        raise invalid_argument(f"emulator.gcp does not implement {what} {value!r}.")
    return name


def parse_aggregation(query: Mapping[str, str], group_by: list[str]) -> Aggregation | None:
    """The `aggregation.*` query parameters; None when there are none."""
    if any(k.startswith("secondaryAggregation.") for k in query):
        raise invalid_argument("emulator.gcp does not implement secondaryAggregation.")
    aligner = _enum(query.get("aggregation.perSeriesAligner"), ALIGNERS, "perSeriesAligner")
    reducer = _enum(query.get("aggregation.crossSeriesReducer"), REDUCERS, "crossSeriesReducer")
    period_text = query.get("aggregation.alignmentPeriod")
    if aligner in (None, "ALIGN_NONE") and reducer in (None, "REDUCE_NONE"):
        return None
    if aligner in (None, "ALIGN_NONE"):
        raise invalid_argument(
            "A crossSeriesReducer requires a perSeriesAligner other than ALIGN_NONE."
        )
    match = _DURATION.match(period_text or "")
    if match is None:
        raise invalid_argument("The alignment period is required when a per-series aligner is set.")
    period = float(match[1])
    if period < MIN_ALIGNMENT_SECONDS:
        raise invalid_argument("The alignment period must be at least 60 seconds.")
    return Aggregation(period, str(aligner), reducer or "REDUCE_NONE", tuple(group_by))


def _value(point: Mapping[str, Any]) -> float:
    value = point["value"]
    return float(value.get("doubleValue", value.get("int64Value", 0)))


def _end(point: Mapping[str, Any]) -> float:
    text = point["interval"]["endTime"].replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def _point(start: float, end: float, value: float, value_type: str) -> dict[str, Any]:
    typed = {"int64Value": str(round(value))} if value_type == "INT64" else {"doubleValue": value}
    return {"interval": {"startTime": rfc3339(start), "endTime": rfc3339(end)}, "value": typed}


def align(series: dict[str, Any], agg: Aggregation, start: float, end: float) -> dict[str, Any]:
    """One series aligned: one point per period with data, newest first."""
    kind = agg.aligner.removeprefix("ALIGN_")
    value_type = series.get("valueType", "DOUBLE")
    if kind in ("MEAN", "RATE"):
        value_type = "DOUBLE"
    elif kind == "COUNT":
        value_type = "INT64"
    buckets: dict[int, list[float]] = {}
    for point in series.get("points", []):
        at = _end(point)
        if start < at <= end:
            buckets.setdefault(int((end - at) // agg.period), []).append(_value(point))
    points = []
    for k in sorted(buckets):
        values = buckets[k]
        value = sum(values) / agg.period if kind == "RATE" else _COMBINE[kind](values)
        period_end = end - k * agg.period
        points.append(_point(period_end - agg.period, period_end, value, value_type))
    metric_kind = "DELTA" if kind in ("DELTA", "SUM") else "GAUGE"
    return {**series, "metricKind": metric_kind, "valueType": value_type, "points": points}


def _label(series: Mapping[str, Any], path: str) -> str | None:
    part, _, name = path.partition(".labels.")
    if path in ("resource.type", "metric.type"):
        return str(series[path.split(".")[0]]["type"])
    return series.get(part, {}).get("labels", {}).get(name) if name else None


def reduce(aligned: list[dict[str, Any]], agg: Aggregation) -> list[dict[str, Any]]:
    """Aligned series combined per `group_by` value set, point by point (same period ends)."""
    groups: dict[tuple[str | None, ...], list[dict[str, Any]]] = {}
    for series in aligned:
        groups.setdefault(tuple(_label(series, f) for f in agg.group_by), []).append(series)
    kind = agg.reducer.removeprefix("REDUCE_")
    out = []
    for key, members in groups.items():
        first, labels = members[0], dict(zip(agg.group_by, key, strict=True))
        by_end: dict[str, list[float]] = {}
        spans: dict[str, str] = {}
        for series in members:
            for point in series["points"]:
                by_end.setdefault(point["interval"]["endTime"], []).append(_value(point))
                spans[point["interval"]["endTime"]] = point["interval"]["startTime"]
        value_type = "DOUBLE" if kind == "MEAN" else first["valueType"]
        value_type = "INT64" if kind == "COUNT" else value_type
        points = [
            {
                "interval": {"startTime": spans[e], "endTime": e},
                "value": _point(0, 0, _COMBINE[kind](v), value_type)["value"],
            }
            for e, v in sorted(by_end.items(), reverse=True)
        ]
        out.append(_reduced(first, labels, points, value_type))
    return out


def _reduced(
    first: dict[str, Any], labels: dict[str, str | None], points: list[dict[str, Any]], vt: str
) -> dict[str, Any]:
    def kept(part: str) -> dict[str, str]:
        prefix = f"{part}.labels."
        return {k[len(prefix) :]: v for k, v in labels.items() if k.startswith(prefix) and v}

    series = {
        "metric": {"type": first["metric"]["type"], "labels": kept("metric")},
        "resource": {"type": first["resource"]["type"], "labels": kept("resource")},
        "metricKind": first["metricKind"],
        "valueType": vt,
        "points": points,
    }
    if "unit" in first:
        series["unit"] = first["unit"]
    return series


def aggregate(
    series: list[dict[str, Any]], agg: Aggregation | None, start: float, end: float
) -> list[dict[str, Any]]:
    """The series as `agg` asks (unchanged without one); series left with no point dropped."""
    if agg is None:
        return series
    aligned = [s for s in (align(s, agg, start, end) for s in series) if s["points"]]
    return aligned if agg.reducer == "REDUCE_NONE" else reduce(aligned, agg)
