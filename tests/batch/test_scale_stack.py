"""Issue 15's "done when", on the local stack (``local.stack``: emulator.gcp with the sim engine,
Prefect's server, two process workers on its pool, ``batch-shard`` deployed from prefect.yaml):

1. A 20,000-prompt batch with ``--workers 2`` over the same service deployed in two emulated
   regions of unequal slots succeeds; every id is written exactly once; Prefect's API says each
   worker ran one child flow run; each region served, by its own ingress's count (Cloud
   Monitoring's request_count), a share within 10 % of its slot share.
2. One region's service killed mid-run (``POST /_emulator/outage``) and one worker process
   SIGKILLed while it runs a child: every id exactly once after at most one rerun.

The batches are started as a user would, with ``ollama-cloudrun batch`` against the stack's
server (the parent runs in that process; its children on the pool's workers). Each worker runs
one flow run at a time (``worker_limit=1``), so the two parts go one to each worker.

Each request holds its slot ``SERVICE_SECONDS`` (T), so a region serves at most its slots / T
(24 and 8 prompts/s here), as GPUs bound a real one. With an instant sim the emulator's CPU bounds
the run instead: every region's ingress is a thread of the one emulator process and a region's
instances are one sim server, so each region serves what CPU it gets (measured under load, slot
shares 3 to 1: 9,910 / 10,090 answers) — that says how busy the machine is, not how the batch
spreads its prompts. With T = 0.5 s the emulator has CPU to spare and the batch client sets the
pace, the case the lanes' stride scheduling keeps to the slot shares (measured: 74.0 / 26.0 %).
The price: 20,000 prompts take 10.5 min at best (14 min measured with the 2 cores shared).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from local.stack import LocalStack, StackConfig, running_stack
from tasks import clients
from tests.batch.conftest import local, read_output, write_prompts

pytestmark = [pytest.mark.slow, pytest.mark.scale]

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = 4
INSTANCES = {"us-central1": 3, "europe-west4": 1}  # 12 and 4 slots: shares 0.75 and 0.25
SERVICE_SECONDS = 0.5
WORKER_NAMES = {"local-worker-1", "local-worker-2"}


@dataclass(frozen=True)
class Scale:
    stack: LocalStack
    service: str

    @property
    def targets(self) -> list[str]:
        return [arg for region in INSTANCES for arg in ("--target", f"{region}/{self.service}")]


def _cli(stack: LocalStack, *args: str) -> subprocess.Popen[str]:
    """``ollama-cloudrun ARGS`` against the stack: its Prefect server, its emulator."""
    argv = [sys.executable, "-m", "flows", "--env-file", str(stack.emulator_env_file), *args]
    return subprocess.Popen(
        argv, cwd=ROOT, env=stack.prefect_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _finished(cli: subprocess.Popen[str], timeout: float = 1800) -> tuple[int, str, str]:
    out, err = cli.communicate(timeout=timeout)
    return cli.returncode, out, err


def _control(stack: LocalStack, path: str, body: dict[str, Any]) -> None:
    url = f"{stack.emulator_env['OLLAMA_CLOUDRUN_API_ENDPOINT']}/_emulator/{path}"
    httpx.post(url, json=body, timeout=120).raise_for_status()


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scale]:
    state_dir = tmp_path_factory.mktemp("scale-stack")
    config = StackConfig(
        state_dir=state_dir, port=0, engine="sim", register=False, worker_limit=1,
        worker_query_seconds=1, startup_timeout=300,
    )  # fmt: skip
    with running_stack(config) as stack:
        sim = {"OLLAMA_SIM_SERVICE_SECONDS": str(SERVICE_SECONDS)}
        sim["OLLAMA_SIM_RESPONSE_TOKENS"] = "2"
        _control(stack, "config", {"sim_env": sim})
        service = f"scale-{uuid.uuid4().hex[:8]}"
        # batch-shard from prefect.yaml and the service in each region, all at once.
        started = [
            subprocess.Popen(
                [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name",
                 "batch-shard", "--prefect-file", str(config.prefect_file)],
                cwd=ROOT, env=stack.prefect_env(), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
            ),
            *(
                _cli(stack, "deploy", "--service", service, "--region", region,
                     "--max-instances", str(instances), "--concurrency", str(CONCURRENCY),
                     "--no-run-smoke-test")
                for region, instances in INSTANCES.items()
            ),
        ]  # fmt: skip
        finished = [(p.args, *_finished(p, timeout=900)) for p in started]
        for argv, code, out, err in finished:
            assert code == 0, (argv, out[-2000:], err[-3000:])
        yield Scale(stack, service)


def _served(scale: Scale, since: dt.datetime) -> Counter[str]:
    """Requests each region's service answered 2xx since ``since``: Cloud Monitoring's
    request_count, which the emulator serves from what each region's own ingress answered."""
    served: Counter[str] = Counter()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in scale.stack.emulator_env.items():
            patch.setenv(key, value)
        cloud = clients.resolve_cloud()
        series = clients.monitoring_resource(cloud).projects().timeSeries()
        end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        for region in INSTANCES:
            body = series.list(
                name=f"projects/{cloud.project}",
                filter='metric.type="run.googleapis.com/request_count" AND '
                f'resource.labels.service_name="{scale.service}" AND '
                f'resource.labels.location="{region}" AND metric.labels.response_code_class="2xx"',
                interval_startTime=since.isoformat().replace("+00:00", "Z"),
                interval_endTime=end.isoformat().replace("+00:00", "Z"),
            ).execute()
            for found in body.get("timeSeries", []):
                served[region] += sum(int(p["value"]["int64Value"]) for p in found["points"])
    return served


def _child_runs(stack: LocalStack, run: str) -> list[dict[str, Any]]:
    """The batch's child flow runs (named ``<run>-w<k>``), as Prefect's API has them."""
    body = {"flow_runs": {"name": {"like_": f"{run}-w"}}}
    response = httpx.post(f"{stack.api_url}/flow_runs/filter", json=body, timeout=60)
    response.raise_for_status()
    runs: list[dict[str, Any]] = response.json()
    return runs


def _result_ids(out: Path) -> Counter[str]:
    results, errors = read_output(local(out))
    assert errors == []
    return Counter(r["id"] for r in results)


@pytest.mark.timeout(3600)  # 10.5-14 min of prompts (the docstring says why), after the stack
def test_twenty_thousand_prompts_over_two_regions_and_two_workers(
    scale: Scale, tmp_path: Path
) -> None:
    n = 20_000
    ids = write_prompts(tmp_path / "in" / "prompts.jsonl", n)
    out = tmp_path / "out"
    since = dt.datetime.now(dt.UTC)
    batch = _cli(scale.stack, "batch", "--input", str(tmp_path / "in"), "--output", str(out),
                 *scale.targets, "--workers", "2", "--shard-size", "500")  # fmt: skip
    code, stdout, stderr = _finished(batch)
    assert code == 0, stderr[-4000:]
    manifest = json.loads(stdout)

    assert manifest["counts"]["succeeded"] == n and manifest["counts"]["failed"] == 0
    assert _result_ids(out) == Counter(ids)  # every id exactly once

    # Prefect's API: two child flow runs of batch-shard, completed, one on each worker.
    children = _child_runs(scale.stack, manifest["run"])
    assert sorted(c["name"] for c in children) == [f"{manifest['run']}-w1", f"{manifest['run']}-w2"]
    assert all(c["state_type"] == "COMPLETED" for c in children)
    assert {c["work_pool_name"] for c in children} == {scale.stack.config.work_pool}
    assert {c["labels"]["prefect.worker.name"] for c in children} == WORKER_NAMES
    assert len({c["infrastructure_pid"] for c in children}) == 2

    # Each region's share, by its own ingress's count, within 10 % of its slot share.
    served = _served(scale, since)
    slots = {region: instances * CONCURRENCY for region, instances in INSTANCES.items()}
    for region, region_slots in slots.items():
        share, expected = served[region] / n, region_slots / sum(slots.values())
        assert abs(share - expected) <= 0.1 * expected, (region, served, expected)
        target = next(t for t in manifest["targets"] if t["region"] == region)
        assert target["ok"] == served[region]  # the client's count agrees with the service's
    assert sum(served.values()) == n


def _has_shard_in(out: Path, first: int, last: int) -> bool:
    seqs = {int(p.stem.rpartition("-")[2]) for p in (out / "results").glob("*.jsonl")}
    return any(first <= seq <= last for seq in seqs)


def _running_child_of(stack: LocalStack, worker: str) -> dict[str, Any] | None:
    body = {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}
    response = httpx.post(f"{stack.api_url}/flow_runs/filter", json=body, timeout=60)
    response.raise_for_status()
    for run in response.json():
        if run["labels"].get("prefect.worker.name") == worker and "part" in run["parameters"]:
            return dict(run)
    return None


def _children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.timeout(1800)
def test_a_region_and_a_worker_killed_mid_run_cost_no_prompt_after_one_rerun(
    scale: Scale, tmp_path: Path
) -> None:
    n = 1_200
    ids = write_prompts(tmp_path / "in" / "prompts.jsonl", n)
    out = tmp_path / "out"
    args = ["batch", "--input", str(tmp_path / "in"), "--output", str(out), *scale.targets,
            "--workers", "2", "--shard-size", "30"]  # fmt: skip
    # The smaller region dies: the other's 12 slots finish the run.
    outage = {"location": "europe-west4", "service": scale.service, "outage": "refused"}
    worker_pid = scale.stack.worker_pids()[0]
    orphans: list[int] = []
    batch = _cli(scale.stack, *args)
    try:
        # Once worker 1's child has written a shard: the first region dies, then the worker.
        deadline = time.monotonic() + 600
        while True:
            assert time.monotonic() < deadline and batch.poll() is None, "worker 1 ran no part"
            child = _running_child_of(scale.stack, "local-worker-1")
            part = child["parameters"]["part"] if child else None
            if part and _has_shard_in(out, part["first"], part["last"]):
                break
            time.sleep(0.2)
        _control(scale.stack, "outage", outage)
        orphans = _children_of(worker_pid)  # the flow-run process outlives its worker
        os.kill(worker_pid, signal.SIGKILL)
        code, _, stderr = _finished(batch)
        if code != 0:  # the killed worker's child crashed: the batch says so, a rerun finishes
            assert code == 1 and "did not complete" in stderr, stderr[-4000:]
            code, _, stderr = _finished(_cli(scale.stack, *args))
            assert code == 0, stderr[-4000:]
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait(timeout=60)
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _control(scale.stack, "outage", {**outage, "outage": None})
    assert _result_ids(out) == Counter(ids)  # every id exactly once
