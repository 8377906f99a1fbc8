"""One batch over the same private service deployed in two emulated regions, one of which dies
mid-run (`POST /_emulator/outage`): every id exactly once, nothing lost, the run succeeds.

Each region's ingress checks its own ID-token audience, so this also shows that every target
gets tokens for its own URL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator.gcp import GcpEmulatorProcess
from flows.batch import BatchParams, batch_inference
from flows.deploy import DeployParameters, deploy
from tests.batch.conftest import INSTANT_SETUP, local, read_output, write_prompts

pytestmark = pytest.mark.slow

REGIONS = ("us-central1", "europe-west4")


def _control(emulator: GcpEmulatorProcess, path: str, body: dict[str, Any]) -> None:
    httpx.post(f"{emulator.base_url}/_emulator/{path}", json=body, timeout=60).raise_for_status()


@pytest.fixture
def slow_sim(gcp_emulator: GcpEmulatorProcess, gcp_env: dict[str, str]) -> Iterator[None]:
    """Instances started now hold each request's slot for 0.05 s; builds and IAM propagation
    take no time (not what this test is about: tests/batch/test_invoker_e2e.py waits them out;
    gcp_env restores them)."""
    config = {"sim_env": {"OLLAMA_SIM_SERVICE_SECONDS": "0.05"}, **INSTANT_SETUP}
    _control(gcp_emulator, "config", config)
    try:
        yield
    finally:
        _control(gcp_emulator, "config", {"sim_env": {}})


def test_a_region_killed_mid_run_costs_no_prompt(
    prefect_api: str, gcp_emulator: GcpEmulatorProcess, slow_sim: None, tmp_path: Path
) -> None:
    service = f"ollama-{uuid.uuid4().hex[:8]}"
    for region in REGIONS:
        spec = DeployParameters(
            service=service, region=region, max_instances=2, concurrency=2, run_smoke_test=False
        )
        assert deploy(spec)["uri"]
    n = 300
    ids = write_prompts(tmp_path / "in" / "p.jsonl", n)
    params = BatchParams(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        target=[service, f"{REGIONS[1]}/{service}"],  # the first in the default region
        shard_size=25,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.5,
        circuit_cooldown_seconds=60,
    )
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(lambda: asyncio.run(batch_inference(params)))
        deadline = time.monotonic() + 180
        while len(list((tmp_path / "out" / "results").glob("*"))) < 3:
            assert not run.done() and time.monotonic() < deadline, "the run ended too early"
            time.sleep(0.05)
        body = {"location": REGIONS[0], "service": service, "outage": "refused"}
        _control(gcp_emulator, "outage", body)
        manifest = run.result(timeout=300)

    results, errors = read_output(local(tmp_path / "out"))
    assert errors == []
    assert Counter(r["id"] for r in results) == Counter(ids)  # every id exactly once
    assert manifest["counts"]["succeeded"] == n and manifest["counts"]["failed"] == 0
    dead, alive = manifest["targets"]
    assert (dead["name"], alive["name"]) == (f"{REGIONS[0]}/{service}", f"{REGIONS[1]}/{service}")
    assert dead["slots"] == alive["slots"] == 4
    assert dead["failed"] >= 1 and dead["retried"] == dead["failed"]
    assert dead["circuit_opens"] == 1 and alive["failed"] == 0
    assert alive["ok"] > dead["ok"] > 0 and dead["ok"] + alive["ok"] == n
    assert dead["usd"] > 0 and alive["usd"] > 0  # each region's instance-seconds, priced
