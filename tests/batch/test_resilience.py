"""Slow end-to-end checks: 10,000 prompts through injected faults, and a SIGKILLed run resumed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from emulator.ollama.launcher import OllamaServer
from flows.batch import BatchParams, batch_inference
from tasks.errors import LeaseHeldError
from tests.batch.conftest import local, read_output, write_prompts

# 13 % of requests meet a fault, of every kind (issue 5: at least 10 %). The two kinds whose cost
# is time are rarer (1 %, still ~100 each): a 503 halves the in-flight limit (AIMD), a stall holds
# a slot until the request timeout.
FAULTS = {
    "OLLAMA_SIM_FAULT_503": "0.01",
    "OLLAMA_SIM_FAULT_500": "0.04",
    "OLLAMA_SIM_FAULT_RESET": "0.035",
    "OLLAMA_SIM_FAULT_MIDSTREAM": "0.035",
    "OLLAMA_SIM_FAULT_STALL": "0.01",
    "OLLAMA_SIM_STALL_SECONDS": "2",
    "OLLAMA_SIM_SEED": "11",
    "OLLAMA_SIM_RESPONSE_TOKENS": "4-8",
}


@pytest.mark.slow
def test_ten_thousand_prompts_through_faults_every_id_once_all_succeeded(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    ids = write_prompts(tmp_path / "in" / "prompts.jsonl", 10_000)
    server = sim_server(parallel=16, **FAULTS)
    params = BatchParams(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        target=server.base_url,
        in_flight=16,
        shard_size=2000,
        max_retries=12,
        request_timeout_seconds=0.75,  # what a stall costs; an answer takes milliseconds
        backoff_initial_seconds=0.02,
        backoff_max_seconds=0.5,
        stream=True,  # the mode in which an error line can arrive mid-stream
    )
    manifest = asyncio.run(batch_inference(params))
    results, errors = read_output(local(tmp_path / "out"))
    assert errors == []
    assert Counter(r["id"] for r in results) == Counter(ids)  # every id exactly once
    assert manifest["counts"] == {"total": 10_000, "succeeded": 10_000, "failed": 0, "skipped": 0}
    assert manifest["this_run"]["retries"] >= 1000  # the faults really happened
    assert all(r["done_reason"] in ("stop", "length") for r in results)


def _start_batch(params: BatchParams, api_url: str) -> subprocess.Popen[bytes]:
    """``ollama-cloudrun batch`` with these parameters, in a subprocess."""
    env = {**os.environ, "PREFECT_API_URL": api_url}
    options = ["--input", params.input, "--output", params.output, "--target", params.target]
    options += ["--in-flight", str(params.engine.in_flight), "--shard-size", str(params.shard_size)]
    return subprocess.Popen(
        [sys.executable, "-m", "flows", "batch", *options],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_killed_run_resumes_and_every_id_is_written_once(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    ids = write_prompts(tmp_path / "in.jsonl", 3000)
    server = sim_server(parallel=8, OLLAMA_SIM_SERVICE_SECONDS="0.02")
    params = BatchParams(
        input=str(tmp_path / "in.jsonl"),
        output=str(tmp_path / "out"),
        target=server.base_url,
        in_flight=8,
        shard_size=200,
    )
    first = _start_batch(params, prefect_api)
    store = local(tmp_path / "out")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if len(read_output(store)[0]) >= 600:  # killed mid-run, after some shards landed
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[0].decode()[-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    done_before = {r["id"] for r in read_output(store)[0]}
    assert 600 <= len(done_before) < 3000

    # The killed run's lease has not expired: a plain rerun refuses, naming the holder; the
    # operator who knows it is dead takes over (tasks/batch/lease.py). The reruns run in this
    # process (only the killed run needs its own); the CLI's exit 2 is tests/batch/test_lease.py's.
    with pytest.raises(LeaseHeldError, match=rf"leased by flow run .* pid {first.pid}\b"):
        asyncio.run(batch_inference(params))
    assert {r["id"] for r in read_output(store)[0]} == done_before  # it sent nothing

    manifest = asyncio.run(batch_inference(params.model_copy(update={"takeover": True})))
    assert manifest["counts"]["succeeded"] == 3000
    results, errors = read_output(store)
    assert errors == []
    assert Counter(r["id"] for r in results) == Counter(ids)
    counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]
    assert counts["skipped"] == len(done_before) and counts["succeeded"] == 3000
