"""A batch over several Prefect workers (``batch_inference(params, workers=N)``).

The quick tests pin the split, the plan filter, the lease check and the merge. The slow ones run
two real process workers (subprocesses of ``prefect worker start`` against the session's test
server) on a pool of their own, with ``batch-shard`` registered from prefect.yaml by
``prefect deploy``: a batch with two workers over an output an earlier run left, where each ran
one part, and a part SIGKILLed mid-run whose rerun sends only what is missing. Each child flow
run costs a process start that imports Prefect twice (its supervisor, then the engine): the
slow tests start as few as they can.
"""

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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.artifacts import Artifact
from prefect.exceptions import ParameterTypeError

from emulator.ollama.launcher import OllamaServer
from flows.batch import SUMMARY_KEY, BatchParams, batch_inference
from tasks.batch import workers
from tasks.batch.dispatch import RunTotals
from tasks.batch.lease import LEASE, OutputLease, check_held_by
from tasks.batch.plan import Shard
from tasks.batch.records import PromptRequest
from tasks.batch.workers import (
    BeforeRun,
    LaneReport,
    PartReport,
    ShardPart,
    merge_reports,
    shards_of_part,
    split_parts,
)
from tasks.errors import BatchFailedError, ConfigurationError, LeaseHeldError
from tasks.processes import stop_process
from tests.batch.conftest import local, read_output, write_prompts

ROOT = Path(__file__).resolve().parents[2]
POOL = "batch-workers-test"

# -- the split, the plan filter, the lease check, the merge (no Prefect) -----------------------


@pytest.mark.parametrize(("shards", "n"), [(0, 2), (1, 2), (2, 2), (7, 2), (10, 3), (5, 8)])
def test_parts_are_disjoint_contiguous_and_nearly_equal(shards: int, n: int) -> None:
    parts = split_parts(shards, n, run="R", parent="F")
    covered = [seq for p in parts for seq in range(p.first, p.last + 1)]
    assert covered == list(range(1, shards + 1))
    assert len(parts) == min(n, shards)
    sizes = [p.last - p.first + 1 for p in parts]
    assert not sizes or max(sizes) - min(sizes) <= 1
    assert [p.worker for p in parts] == list(range(1, len(parts) + 1))
    assert all(p.planned == shards for p in parts)


def test_workers_below_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 1"):
        split_parts(3, 0, run="R", parent=None)
    # The flow's own parameter check (a deployment run, the UI's form: minimum 1) refuses it too.
    params = {"params": {"input": "in.jsonl", "output": "out"}}
    with pytest.raises(ParameterTypeError, match="workers: Input should be greater than or equal"):
        batch_inference.validate_parameters({**params, "workers": 0})
    assert batch_inference.validate_parameters({**params, "workers": 2})["workers"] == 2
    assert batch_inference.parameters.properties["workers"]["minimum"] == 1


def _request(id_: str, line: int) -> PromptRequest:
    return PromptRequest(id=id_, file="in.jsonl", line=line, size=10, prompt="q")


def _plan(n: int, per: int) -> Iterator[Shard]:
    for seq in range(1, n + 1):
        yield Shard(seq, [_request(f"s{seq}-{i}", seq * 10 + i) for i in range(per)])


def test_a_part_sends_its_range_less_what_an_earlier_attempt_wrote() -> None:
    part = ShardPart(run="R", parent_flow_run_id=None, worker=2, first=3, last=4, planned=5)
    got = list(shards_of_part(_plan(5, 2), part, skip={"s3-0"}))
    assert [(s.seq, [r.id for r in s.requests]) for s in got] == [
        (3, ["s3-1"]),
        (4, ["s4-0", "s4-1"]),
    ]


def test_a_plan_that_differs_from_the_parents_is_an_error() -> None:
    part = ShardPart(run="R", parent_flow_run_id=None, worker=1, first=1, last=2, planned=6)
    with pytest.raises(ConfigurationError, match="input changed"):
        list(shards_of_part(_plan(5, 1), part, skip=set()))


def test_before_run_hides_the_shards_of_this_run_and_later(tmp_path: Path) -> None:
    store = local(tmp_path)
    for name in ("results/20260101T000000000000Z-aa-000001.jsonl", "results/R5-000001.jsonl",
                 "results/R5-r2-000002.jsonl", "errors/R4-000003.jsonl"):  # fmt: skip
        store.create(name, b"{}\n")
    view = BeforeRun(store, "R5")
    assert sorted(o.name for o in view.list("results/")) == [
        "results/20260101T000000000000Z-aa-000001.jsonl"
    ]
    assert [o.name for o in view.list("errors/")] == ["errors/R4-000003.jsonl"]
    with pytest.raises(TypeError):
        view.create("results/x.jsonl", b"")


def test_a_child_runs_only_under_its_parents_live_lease(tmp_path: Path) -> None:
    store = local(tmp_path)
    with pytest.raises(LeaseHeldError, match="gone"):
        check_held_by(store, run="R1", flow_run_id="F1")
    settings = BatchParams(input=str(tmp_path / "in"), output=str(tmp_path), lease_seconds=60)
    lease = OutputLease(store, run="R1", flow_run_id="F1", params=settings)
    lease.acquire()
    try:
        check_held_by(store, run="R1", flow_run_id="F1")
        with pytest.raises(LeaseHeldError, match="no longer holds"):
            check_held_by(store, run="R2", flow_run_id="F1")
        with pytest.raises(LeaseHeldError, match="no longer holds"):
            check_held_by(store, run="R1", flow_run_id="F2")
    finally:
        lease.release()
    held = {"run": "R1", "flow_run_id": "F1", "expires_at": dt.datetime.now(dt.UTC).isoformat()}
    store.put(LEASE, json.dumps(held).encode())
    with pytest.raises(LeaseHeldError, match="expired"):
        check_held_by(store, run="R1", flow_run_id="F1")


def _lane(sent: int, state: str = "closed") -> LaneReport:
    return LaneReport(
        sent=sent, ok=sent - 1, failed=1, retried=1, latency_buckets={3: sent - 1}, in_flight=4,
        backoffs=1, instance_seconds=1.5, circuit_opens=state != "closed", circuit=state,
    )  # fmt: skip


def _report(worker: int, succeeded: int, failed: int, buckets: dict[int, int]) -> PartReport:
    return PartReport(
        worker=worker, flow_run_id=None, host="h", pid=1, parent_pid=2, shards=(1, 1),
        succeeded=succeeded, failed=failed, input_errors=1, resumed=0, written=[f"w{worker}"],
        error_kinds={"HTTP 500": failed}, latency_buckets=buckets, retries=worker,
        prompt_tokens=10, eval_tokens=20,
        lanes=[_lane(10 * worker), _lane(worker, "open" if worker == 2 else "closed")],
    )  # fmt: skip


def test_merged_reports_sum_the_parts_lane_by_lane() -> None:
    totals, engine = merge_reports([_report(1, 5, 1, {3: 5}), _report(2, 7, 2, {3: 2, 9: 5})])
    assert (totals.succeeded, totals.failed, totals.input_errors) == (12, 3, 2)
    assert totals.written == ["w1", "w2"] and totals.error_kinds == Counter({"HTTP 500": 3})
    assert totals.latency.count == 12 and totals.latency.buckets == {3: 7, 9: 5}
    stats = engine.stats
    assert (stats.retries, stats.prompt_tokens, stats.eval_tokens) == (3, 20, 40)
    assert (engine.max_limit, engine.backoffs) == (16, 4)
    first, second = engine.lanes
    assert (first.stats.sent, first.stats.ok, first.stats.latency.count) == (30, 28, 28)
    assert (second.stats.sent, second.breaker.opens, second.breaker.state) == (3, 1, "open")
    assert first.limiter.instance_seconds == 3.0 and first.breaker.state == "closed"
    assert isinstance(totals, RunTotals)


# -- against the session's Prefect server ------------------------------------------------------


def _params(server: OllamaServer, inp: Path, out: Path, **kw: Any) -> BatchParams:
    kw.setdefault("shard_size", 25)
    return BatchParams(
        input=str(inp),
        output=str(out),
        target=server.base_url,
        request_timeout_seconds=10,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.1,
        **kw,
    )


def test_several_workers_without_the_deployment_say_how_to_create_it(
    prefect_api: str,
    sim_server: Callable[..., OllamaServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "CHILD_DEPLOYMENT", "batch-shard/not-registered-here")
    write_prompts(tmp_path / "in.jsonl", 3)
    params = _params(sim_server(), tmp_path / "in.jsonl", tmp_path / "out")
    with pytest.raises(
        ConfigurationError, match=r"prefect deploy --name batch-shard.*\./dev stack"
    ):
        asyncio.run(batch_inference(params, workers=2))
    assert not (tmp_path / "out" / LEASE).exists()  # refused before the lease


# -- two real process workers ------------------------------------------------------------------


def _start_worker(api: str, name: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
    argv += ["--type", "process", "--name", name, "--limit", "1"]
    with log.open("ab") as handle:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


@pytest.fixture(scope="module")
def two_workers(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """The pool, ``batch-shard`` on it (prefect.yaml via ``prefect deploy``), two workers; yields
    the workers' pids."""
    from prefect.workers.process import ProcessWorker

    logs = tmp_path_factory.mktemp("workers")
    template = ProcessWorker.get_default_base_job_template()
    body = {"name": POOL, "type": "process", "base_job_template": template}
    response = httpx.post(f"{prefect_api}/work_pools/", json=body, timeout=30)
    assert response.status_code in (201, 409), response.text
    deploy = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "batch-shard",
         "--pool", POOL],
        cwd=ROOT, env={**os.environ, "PREFECT_API_URL": prefect_api}, capture_output=True,
        text=True, timeout=180, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    procs = [_start_worker(prefect_api, f"w{k}", logs / f"w{k}.log") for k in (1, 2)]
    try:
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            stop_process(proc, grace=10, signals=(signal.SIGINT, signal.SIGTERM), group=True)


def _result_ids(out: Path) -> Counter[str]:
    results, errors = read_output(local(out))
    assert errors == []
    return Counter(r["id"] for r in results)


def _reports(out: Path) -> list[PartReport]:
    return [PartReport.model_validate_json(p.read_bytes()) for p in (out / "parts").glob("*.json")]


@pytest.mark.slow
def test_two_workers_each_run_a_part_and_every_id_is_written_once(
    prefect_api: str, sim_server: Callable[..., OllamaServer], two_workers: list[int],
    tmp_path: Path,
) -> None:  # fmt: skip
    server = sim_server(parallel=8)
    # An earlier run (one process) did the first 50 prompts; then the input grew to 350. Every
    # child plans against the output as that run left it, and must agree with the parent.
    done = write_prompts(tmp_path / "in" / "a.jsonl", 50)
    params = _params(server, tmp_path / "in", tmp_path / "out", in_flight=8)
    assert asyncio.run(batch_inference(params))["counts"]["succeeded"] == 50
    ids = done + write_prompts(tmp_path / "in" / "b.jsonl", 300, start=50)
    manifest = asyncio.run(batch_inference(params, workers=2))

    assert manifest["counts"]["succeeded"] == 350 and manifest["this_run"]["sent"] == 300
    assert manifest["counts"]["skipped"] == 50
    assert _result_ids(tmp_path / "out") == Counter(ids)  # every id exactly once
    reports = _reports(tmp_path / "out")
    assert sorted(r.shards for r in reports) == [(1, 6), (7, 12)]
    assert sorted(r.parent_pid for r in reports) == sorted(two_workers)  # one part per worker
    assert sum(r.succeeded for r in reports) == 300
    assert all(r.send_seconds > 0 and r.send_started_at > 0 for r in reports)  # (the bench)
    assert manifest["service"]["in_flight"] == 8  # the slots shared: 4 + 4
    rows = Artifact.get(SUMMARY_KEY).data  # type: ignore[union-attr]
    links = [row for row in json.loads(str(rows)) if row["metric"].startswith("worker ")]
    assert len(links) == 2 and all("/runs/flow-run/" in row["value"] for row in links)
    assert not (tmp_path / "out" / LEASE).exists()


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


def _running_part(api: str, worker_pid: int) -> tuple[int, ShardPart] | None:
    """The flow-run process of the worker and its part, once that flow run is Running."""
    for pid in _children_of(worker_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ids = [
            e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"PREFECT__FLOW_RUN_ID=")
        ]
        if ids:
            run = httpx.get(f"{api}/flow_runs/{ids[0]}", timeout=30).json()
            if (run.get("state") or {}).get("type") == "RUNNING":
                return pid, ShardPart.model_validate(run["parameters"]["part"])
    return None


def _has_shard_in(out: Path, part: ShardPart) -> bool:
    seqs = {int(p.stem.rpartition("-")[2]) for p in (out / "results").glob("*.jsonl")}
    return any(part.first <= seq <= part.last for seq in seqs)


@pytest.mark.slow
def test_a_killed_part_fails_the_batch_or_is_retried_and_every_id_is_written_once(
    prefect_api: str, sim_server: Callable[..., OllamaServer], two_workers: list[int],
    tmp_path: Path,
) -> None:  # fmt: skip
    n = 120
    ids = write_prompts(tmp_path / "in.jsonl", n)
    # One request in flight per part, 0.2 s each: a part takes ~12 s, its first shard of six
    # ~1.2 s; the part is killed in between, with ~10 s to spare.
    server = sim_server(parallel=2, OLLAMA_SIM_SERVICE_SECONDS="0.2")
    out = tmp_path / "out"
    params = _params(server, tmp_path / "in.jsonl", out, in_flight=2, shard_size=6)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(asyncio.run, batch_inference(params, workers=2))
        # Once worker 1's part runs and has written a shard, its flow-run process is SIGKILLed
        # (the worker lives on and reports the run Crashed).
        deadline, victim = time.monotonic() + 240, None
        while victim is None:
            assert time.monotonic() < deadline and not first.done(), "worker 1 ran no part"
            time.sleep(0.3)
            running = _running_part(prefect_api, two_workers[0])
            if running is not None and _has_shard_in(out, running[1]):
                victim = running[0]
        os.kill(victim, signal.SIGKILL)
        try:
            first.result(timeout=240)
        except BatchFailedError as exc:
            assert "did not complete" in str(exc) and "Crashed" in str(exc)
            failed = True
        else:  # Prefect ran the crashed part again: it resumed after what it had written
            failed = False
            assert any(r.resumed for r in _reports(out))
    written = _result_ids(out)
    assert max(written.values()) == 1
    if failed:  # the rerun (one process: the parts' replanning is the test above) finishes
        assert 0 < sum(written.values()) < n
        manifest = asyncio.run(batch_inference(params))
        assert manifest["this_run"]["sent"] == n - sum(written.values())  # only the missing
        assert manifest["counts"]["skipped"] == sum(written.values())
    assert _result_ids(out) == Counter(ids)  # every id exactly once
