"""The shipped schedules side by side for days of emulated time (issue 13, item 4).

`redeploy` once, `nightly-batch` on three nights and `cleanup-sweep` every hour in between, all in
process on the shared Prefect test server against emulator.gcp (sim engine). The clock the flows
record use with and the sweep judges by is the test's (``tasks.idle.now``): no sleeping. The
service is kept through every sweep while it is used, and swept, with its repository's images,
once ``idle_hours`` pass without use.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from flows.batch import BatchParams, batch_inference
from flows.deploy import deploy
from flows.parameters import DeployParameters
from flows.teardown import TeardownParameters, protected_services, teardown
from tasks import artifact_registry, clients, idle
from tests.flows.conftest import EmulatorControl

HOUR = 3600.0
IDLE_HOURS = 24.0
NIGHTS = (2, 26, 50)  # 02:00 on three days, hours after the redeploy
PROMPTS_PER_NIGHT = 3


class EmulatedClock:
    """Unix seconds that only the test moves."""

    def __init__(self) -> None:
        self.start = time.time()
        self.hours = 0.0

    def __call__(self) -> float:
        return self.start + self.hours * HOUR


def _service(service_id: str) -> run_v2.Service:
    cloud = clients.resolve_cloud()
    client = clients.run_services_client(cloud)
    return client.get_service(name=client.service_path(cloud.project, "us-central1", service_id))


def _add_prompts(bucket: str, night: int) -> None:
    blob = (
        clients.storage_client(clients.resolve_cloud())
        .bucket(bucket)
        .blob(f"prompts/night-{night}.jsonl")
    )
    lines = [json.dumps({"id": f"n{night}-{i}", "prompt": f"Say {i}."}) for i in range(3)]
    blob.upload_from_string("\n".join(lines) + "\n")


def _sweep(service: str) -> dict[str, str]:
    """One cleanup-sweep run (the deployment's parameters); the service's row."""
    rows = teardown(TeardownParameters(sweep=True, idle_hours=IDLE_HOURS))
    return next((r for r in rows if r["kind"] == "service" and r["name"] == service), {})


def test_the_shipped_deployments_name_their_service_and_the_sweep_protects_it() -> None:
    assert "ollama-gemma" in protected_services()


@pytest.mark.slow
def test_redeploy_nightly_batch_and_hourly_sweep_side_by_side(
    emulator_api: EmulatorControl, service_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = EmulatedClock()
    monkeypatch.setattr(idle, "now", clock)
    cloud = clients.resolve_cloud()
    bucket = f"prompts-{uuid.uuid4().hex[:8]}"
    clients.storage_client(cloud).create_bucket(bucket)

    summary = deploy(DeployParameters(service=service_id))  # the `redeploy` deployment, once
    name = summary["service"]
    repository = artifact_registry.repository_of_image(summary["image"])
    assert repository is not None

    last_use = 0.0
    for hour in range(0, int(NIGHTS[-1] + IDLE_HOURS) + 2):
        if hour in NIGHTS:
            clock.hours = hour
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
            last_use = hour
        clock.hours = hour + 0.5  # cleanup-sweep's cron: minute 30 of every hour
        row = _sweep(name)
        if clock.hours - last_use < IDLE_HOURS:
            assert row["result"] == "kept", (clock.hours, row)
            assert _service(service_id).uri
        else:
            assert row["result"] == "deleted", (clock.hours, row)
            assert "unused since" in row["why"]
            break
    else:
        pytest.fail("the service was never swept")

    with pytest.raises(gexc.NotFound):
        _service(service_id)
    registry = clients.artifact_registry_client(cloud)
    with pytest.raises(gexc.NotFound):
        registry.get_repository(name=repository)  # swept with its images
