"""One run per output: the lease object (``tasks.batch.lease``), unit and end to end."""

from __future__ import annotations

import asyncio
import datetime as dt
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
from tasks.batch.lease import LEASE, OutputLease
from tasks.batch.stores import LocalStore
from tasks.errors import LeaseHeldError, ObjectChangedError
from tests.batch.conftest import local, read_output, write_prompts

ROOT = Path(__file__).resolve().parents[2]


def _lease(
    store: LocalStore, run: str, seconds: float = 300, takeover: bool = False
) -> OutputLease:
    params = BatchParams(input="in", output="out", lease_seconds=seconds, takeover=takeover)
    return OutputLease(store, run=run, flow_run_id=f"flow-{run}", params=params)


def test_a_held_lease_refuses_a_second_run_naming_the_holder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = _lease(store, "a")
    first.acquire()
    try:
        with pytest.raises(LeaseHeldError, match=r"flow run flow-a \(batch a\) on host \S+ pid"):
            _lease(store, "b").acquire()
        held = json.loads((tmp_path / LEASE).read_text())
        assert held["flow_run_id"] == "flow-a" and held["since"] and held["expires_at"]
    finally:
        first.release()
    assert not (tmp_path / LEASE).exists()  # released: the next run takes it at once
    second = _lease(store, "b")
    second.acquire()
    second.release()


def test_takeover_and_expiry_and_a_lost_lease(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = _lease(store, "a")
    first.acquire()
    forced = _lease(store, "b", takeover=True)
    forced.acquire()  # takeover=True: taken although a's lease is live
    assert json.loads((tmp_path / LEASE).read_text())["run"] == "b"
    first.release()  # a's generation is gone: a leaves b's lease alone
    assert json.loads((tmp_path / LEASE).read_text())["run"] == "b"
    forced.release()

    # An expired lease (its holder was killed and stopped renewing) is taken over.
    expired = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    (tmp_path / LEASE).write_text(json.dumps({"run": "dead", "expires_at": expired.isoformat()}))
    late = _lease(store, "c")
    late.acquire()
    assert json.loads((tmp_path / LEASE).read_text())["run"] == "c"
    late.release()


def test_generation_matched_writes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    generation = store.write_if("x.json", b"1", 0)
    with pytest.raises(ObjectChangedError):
        store.write_if("x.json", b"2", 0)
    newer = store.write_if("x.json", b"2", generation)
    with pytest.raises(ObjectChangedError):
        store.write_if("x.json", b"3", generation)
    assert store.read_versioned("x.json") == (b"2", newer)
    with pytest.raises(ObjectChangedError):
        store.delete("x.json", generation)
    store.delete("x.json", newer)
    assert store.read_versioned("x.json") is None


def test_the_holder_renews_its_lease(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    lease = _lease(store, "a", seconds=1.5)
    lease.acquire()
    try:
        before = json.loads((tmp_path / LEASE).read_text())["expires_at"]
        deadline = time.monotonic() + 30
        while json.loads((tmp_path / LEASE).read_text())["expires_at"] == before:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.1)
    finally:
        lease.release()


def _batch(
    inp: Path, out: Path, server: OllamaServer, api: str, *extra: str
) -> subprocess.Popen[str]:
    options = ["--input", str(inp), "--output", str(out), "--target", server.base_url]
    return subprocess.Popen(
        [sys.executable, "-m", "flows", "batch", *options, "--in-flight", "4", *extra],
        env={**os.environ, "PREFECT_API_URL": api},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_runs_at_once_one_runs_the_other_exits_2_naming_the_holder(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    ids = write_prompts(tmp_path / "in.jsonl", 300)
    server = sim_server(parallel=4, OLLAMA_SIM_SERVICE_SECONDS="0.1")  # ≥ 7 s of work
    runs = [_batch(tmp_path / "in.jsonl", tmp_path / "out", server, prefect_api) for _ in "ab"]
    outputs = [run.communicate(timeout=600) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2], outputs
    refused = outputs[[run.returncode for run in runs].index(2)][1]
    assert "LeaseHeldError" in refused and "leased by flow run" in refused and " since " in refused
    results, errors = read_output(local(tmp_path / "out"))
    assert errors == [] and Counter(r["id"] for r in results) == Counter(ids)  # sent once


@pytest.mark.slow
def test_a_killed_holders_lease_is_taken_over_once_it_expired(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    ids = write_prompts(tmp_path / "in.jsonl", 600)
    server = sim_server(parallel=4, OLLAMA_SIM_SERVICE_SECONDS="0.05")
    extra = ("--lease-seconds", "3", "--shard-size", "50")
    first = _batch(tmp_path / "in.jsonl", tmp_path / "out", server, prefect_api, *extra)
    store = local(tmp_path / "out")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(read_output(store)[0]) < 100:
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert (tmp_path / "out" / LEASE).exists()  # the killed run never released it

    # The next run, in this process (only the killed one needs its own; the CLI's exit 2 is
    # the test above's).
    params = BatchParams(
        input=str(tmp_path / "in.jsonl"),
        output=str(tmp_path / "out"),
        target=server.base_url,
        in_flight=4,
        lease_seconds=3,
        shard_size=50,
    )
    try:
        manifest = asyncio.run(batch_inference(params))
    except LeaseHeldError as refused:  # started before the killed run's lease expired
        assert "leased by flow run" in str(refused)
        expires = json.loads((tmp_path / "out" / LEASE).read_text())["expires_at"]
        while dt.datetime.now(dt.UTC) <= dt.datetime.fromisoformat(expires):
            time.sleep(0.2)
        manifest = asyncio.run(batch_inference(params))
    assert manifest["counts"]["succeeded"] == len(ids)
    results, errors = read_output(store)
    assert errors == [] and Counter(r["id"] for r in results) == Counter(ids)
    assert not (tmp_path / "out" / LEASE).exists()
