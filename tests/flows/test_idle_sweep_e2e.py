"""The shipped schedules side by side for days of emulated time (issue 13, item 4).

`redeploy` once, `nightly-batch` on three nights and `cleanup-sweep` every hour in between, all in
process on the shared Prefect test server against emulator.gcp (sim engine). The clock is the
test's, for the flows (``tasks.idle.now``) and for the emulator (its ``clock_offset_seconds``: the
times of services and of the requests Cloud Monitoring counts): no sleeping. The service is kept
through every sweep while it is used, by the flows (their ``last-used`` label) or by a client
calling it directly (only Cloud Monitoring's request_count knows), and swept, with its
repository's images, once ``idle_hours`` pass without use.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from google.api_core import exceptions as gexc

from flows.batch import BatchParams, batch_inference
from flows.deploy import deploy
from flows.parameters import DeployParameters
from flows.teardown import TeardownParameters, protected_services, teardown
from tasks import artifact_registry, clients, idle
from tasks.clients import caller_identity
from tasks.id_tokens import GoogleIdTokenAuth
from tests.flows.conftest import EmulatorControl

HOUR = 3600.0
IDLE_HOURS = 24.0
NIGHTS = (2, 26, 50)  # 02:00 on three days, hours after the redeploy
DIRECT_USE = 60  # a notebook calls the service itself: no flow, no label, only requests
PROMPTS_PER_NIGHT = 3


class EmulatedClock:
    """Unix seconds that only the test moves, for the flows and the emulator alike."""

    def __init__(self, emulator: EmulatorControl) -> None:
        self.start = time.time()
        self.hours = 0.0
        self._emulator = emulator

    def __call__(self) -> float:
        return self.start + self.hours * HOUR

    def move_to(self, hours: float) -> None:
        self.hours = hours
        offset = self() - time.time()
        self._emulator.configure(clock_offset_seconds=max(0.0, offset))


def _call_directly(uri: str) -> None:
    auth = GoogleIdTokenAuth(uri, caller_identity(clients.resolve_cloud()).id_tokens)
    response = httpx.get(f"{uri}/api/tags", auth=auth, timeout=60)
    assert response.status_code == 200, response.text


def _add_prompts(bucket: str, night: int) -> None:
    blob = (
        clients.storage_client(clients.resolve_cloud())
        .bucket(bucket)
        .blob(f"prompts/night-{night}.jsonl")
    )
    lines = [json.dumps({"id": f"n{night}-{i}", "prompt": f"Say {i}."}) for i in range(3)]
    blob.upload_from_string("\n".join(lines) + "\n")


def _sweep(service: str) -> dict[str, str]:
    """One cleanup-sweep run (the deployment's parameters); the service's row. While the service
    is kept, so are its repository and its runtime account."""
    rows = teardown(TeardownParameters(sweep=True, idle_hours=IDLE_HOURS))
    row = next((r for r in rows if r["kind"] == "service" and r["name"] == service), {})
    if row.get("result") == "kept":
        used = ("repository (with its images)", "service account")
        assert not [r for r in rows if r["kind"] in used and r["result"] == "deleted"], rows
    return row


def test_the_shipped_deployments_name_their_service_and_the_sweep_protects_it() -> None:
    assert "ollama-gemma" in protected_services()


@pytest.mark.slow
def test_redeploy_nightly_batch_and_hourly_sweep_side_by_side(
    emulator_api: EmulatorControl, service_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = EmulatedClock(emulator_api)
    monkeypatch.setattr(idle, "now", clock)
    try:
        _run_the_schedules(clock, service_id)
    finally:
        emulator_api.configure(clock_offset_seconds=0.0)


def _run_the_schedules(clock: EmulatedClock, service_id: str) -> None:
    cloud = clients.resolve_cloud()
    bucket = f"prompts-{uuid.uuid4().hex[:8]}"
    clients.storage_client(cloud).create_bucket(bucket)

    summary = deploy(DeployParameters(service=service_id))  # the `redeploy` deployment, once
    name = summary["service"]
    services = clients.run_services_client(cloud)  # one client for the ~90 reads below
    repository = artifact_registry.repository_of_image(summary["image"])
    assert repository is not None

    last_use = last_flow_use = 0.0
    for hour in range(0, int(DIRECT_USE + IDLE_HOURS) + 2):
        if hour == DIRECT_USE:
            clock.move_to(hour)
            _call_directly(summary["uri"])
            last_use = hour
        if hour in NIGHTS:
            clock.move_to(hour)
            _add_prompts(bucket, hour)
            manifest = asyncio.run(
                batch_inference(
                    BatchParams(
                        input=f"gs://{bucket}/prompts/",
                        output=f"gs://{bucket}/results/",
                        target=service_id,
                        model="gemma2:9b",
                    )
                )
            )
            assert manifest["this_run"]["succeeded"] == PROMPTS_PER_NIGHT, hour
            assert manifest["this_run"]["failed"] == 0, hour
            last_use = last_flow_use = hour
        clock.move_to(hour + 0.5)  # cleanup-sweep's cron: minute 30 of every hour
        row = _sweep(name)
        if clock.hours - last_use < IDLE_HOURS:
            assert row["result"] == "kept", (clock.hours, row)
            assert services.get_service(name=name).uri
            if clock.hours - last_flow_use >= IDLE_HOURS:  # only the requests tell
                assert "(Cloud Monitoring)" in row["why"], (clock.hours, row)
        else:
            assert row["result"] == "deleted", (clock.hours, row)
            assert "unused since" in row["why"]
            break
    else:
        pytest.fail("the service was never swept")

    with pytest.raises(gexc.NotFound):
        services.get_service(name=name)
    registry = clients.artifact_registry_client(cloud)
    with pytest.raises(gexc.NotFound):
        registry.get_repository(name=repository)  # swept with its images
