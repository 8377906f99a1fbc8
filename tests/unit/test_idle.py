"""The sweep's idleness rule (tasks/idle.py)."""

from __future__ import annotations

import datetime as dt

from tasks import idle
from tasks.artifact_registry import repository_of_image

AT = 1_800_000_000.0
HOUR = 3600.0


def test_a_recent_use_keeps_a_service_and_an_old_one_does_not() -> None:
    recent = {"last-used": str(int(AT - 23 * HOUR))}
    old = {"last-used": str(int(AT - 25 * HOUR))}
    assert idle.idle_reason(recent, None, AT, 24) is None
    reason = idle.idle_reason(old, None, AT, 24)
    assert reason is not None and reason.startswith("unused since")


def test_an_update_counts_as_a_use_and_expires_at_overrides_use() -> None:
    updated = dt.datetime.fromtimestamp(AT - HOUR, dt.UTC)
    assert idle.idle_reason({"last-used": "1"}, updated, AT, 24) is None
    expired = {"last-used": str(int(AT)), "expires-at": str(int(AT - 1))}
    assert "expires-at" in str(idle.idle_reason(expired, None, AT, 24))


def test_keep_label_and_named_services_are_never_swept() -> None:
    assert idle.keep_reason("projects/p/locations/r/services/a", {"keep": "true"}, frozenset())
    named = idle.keep_reason("projects/p/locations/r/services/a", {}, frozenset({"a"}))
    assert named == "named by a deployment in prefect.yaml"
    assert idle.keep_reason("projects/p/locations/r/services/b", {}, frozenset({"a"})) is None


def test_use_is_recorded_at_most_every_interval() -> None:
    assert idle.should_record_use({}, AT)
    assert not idle.should_record_use({"last-used": str(int(AT - 60))}, AT)
    assert idle.should_record_use({"last-used": str(int(AT - idle.RECORD_INTERVAL_SECONDS))}, AT)


def test_repository_of_an_image() -> None:
    image = "us-central1-docker.pkg.dev/p1/ollama/ollama-gemma@sha256:ab"
    assert repository_of_image(image) == "projects/p1/locations/us-central1/repositories/ollama"
    assert repository_of_image("docker.io/library/nginx") is None
