"""When a resource is idle: the one rule the sweep applies, written once (pure, clock injected).

A managed service is in use until ``idle_hours`` have passed since its last use — the newest of
its ``last-used`` label (Unix seconds, written by deploy, the smoke test and the batch) and its
update time — unless its ``expires-at`` label (Unix seconds) has passed. ``keep=true`` and the
services a deployment in prefect.yaml names are never idle. On top of the labels the sweep asks
Cloud Monitoring whether the service answered any request over the window (tasks.monitoring).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping

from tasks.models import EXPIRES_AT_LABEL, KEEP_LABEL, LAST_USED_LABEL

# A use is recorded at most this often: a label write per batch or deploy, not per request.
RECORD_INTERVAL_SECONDS = 900


def now() -> float:
    """Unix seconds; tests replace this function to run days of emulated schedules in minutes."""
    return time.time()


def label_seconds(labels: Mapping[str, str], key: str) -> float | None:
    value = labels.get(key, "")
    return float(value) if value.isdigit() else None


def should_record_use(labels: Mapping[str, str], at: float) -> bool:
    """Whether ``last-used`` is missing or older than ``RECORD_INTERVAL_SECONDS`` at ``at``."""
    last = label_seconds(labels, LAST_USED_LABEL)
    return last is None or at - last >= RECORD_INTERVAL_SECONDS


def keep_reason(name: str, labels: Mapping[str, str], protected: frozenset[str]) -> str | None:
    """Why ``name`` may never be swept, or None."""
    if labels.get(KEEP_LABEL, "").lower() == "true":
        return f"{KEEP_LABEL}=true"
    if name.rsplit("/", 1)[-1] in protected:
        return "named by a deployment in prefect.yaml"
    return None


def expired_reason(labels: Mapping[str, str], at: float) -> str | None:
    """Why a resource has expired at ``at`` (its ``expires-at`` has passed), or None."""
    expires = label_seconds(labels, EXPIRES_AT_LABEL)
    if expires is not None and expires <= at:
        return f"{EXPIRES_AT_LABEL} {_iso(expires)} has passed"
    return None


def idle_reason(
    labels: Mapping[str, str],
    updated: dt.datetime | None,
    at: float,
    idle_hours: float,
) -> str | None:
    """Why a resource is idle at ``at`` (expired, or unused ``idle_hours``); None: in use."""
    expired = expired_reason(labels, at)
    if expired is not None:
        return expired
    uses = [label_seconds(labels, LAST_USED_LABEL), updated.timestamp() if updated else None]
    last = max((u for u in uses if u is not None), default=None)
    if last is None:
        return "no recorded use"
    if at - last >= idle_hours * 3600:
        return f"unused since {_iso(last)} ({(at - last) / 3600:.1f} h ≥ {idle_hours:g} h)"
    return None


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
