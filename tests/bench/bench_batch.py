"""Batch benchmark: ``.venv/bin/python tests/bench/bench_batch.py [--quick]``.

Against the sim engine with a fixed service time T per request on S slots × I instances (one sim
server with S·I slots stands in for I instances: the batch client only sees slots):
1. makespan of N prompts through ``batch_inference`` vs the ideal N·T/(S·I)  (goal ≥ 0.95);
2. the same work by a sequential loop over the official ``ollama`` client (measured on a
   sample, extrapolated) and by one Prefect task per prompt (``task.map`` on a sample at the same
   concurrency, extrapolated);
3. client CPU time per prompt;
4. peak traced memory (tracemalloc) of the streaming pipeline for 10,000 vs 100,000 prompts
   (``--million``: 1,000,000; ~1 ms of client CPU per prompt here makes that ~15 min), with an
   in-process zero-latency stub backend (no HTTP).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emulator.ollama.launcher import running_ollama_server
from tasks.batch.engine import AdaptiveLimiter, RequestEngine
from tasks.batch.inputs import resolve_inputs
from tasks.batch.ledger import IdLedger
from tasks.batch.records import Completion, PromptRequest
from tasks.batch.steps import PlanStats, plan_shards

QUICK = "--quick" in sys.argv
N = 2_000 if QUICK else 10_000
T, S, I = 0.1, 4, 7  # noqa: E741
SAMPLE_SEQ, SAMPLE_MAP = 40, 200


def write_prompts(path: Path, n: int) -> None:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(
                json.dumps({"id": f"p{i}", "prompt": f"Why is the sky blue ({i})?"}) + "\n"
            )


def bench_flow(url: str, workdir: Path) -> tuple[float, float]:
    from flows.batch import BatchParams, batch_inference

    write_prompts(workdir / "in.jsonl", N)
    params = BatchParams(
        input=str(workdir / "in.jsonl"), output=str(workdir / "out"), target=url, in_flight=S * I
    )
    cpu, wall = time.process_time(), time.perf_counter()
    manifest = asyncio.run(batch_inference(params))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert manifest["counts"]["succeeded"] == N, manifest["counts"]
    return wall, cpu


def bench_sequential(url: str) -> float:
    import ollama

    client = ollama.Client(host=url)
    start = time.perf_counter()
    for i in range(SAMPLE_SEQ):
        client.generate("gemma2:9b", f"Why is the sky blue ({i})?")
    return (time.perf_counter() - start) / SAMPLE_SEQ * N


def bench_task_map(url: str) -> float:
    import ollama
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    @task
    def one(i: int) -> int:
        return ollama.Client(host=url).generate("gemma2:9b", f"q {i}").eval_count or 0

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=S * I))
    def per_prompt(n: int) -> int:
        return sum(one.map(range(n)).result())

    start = time.perf_counter()
    per_prompt(SAMPLE_MAP)
    return (time.perf_counter() - start) / SAMPLE_MAP * N


class StubBackend:
    async def complete(self, request: PromptRequest) -> Completion:
        return Completion("stub answer", "stub", "stop", prompt_eval_count=5, eval_count=2)

    async def aclose(self) -> None:
        return None


def peak_memory(n: int, workdir: Path) -> float:
    """Peak traced MiB to stream n prompts through the planner, ledger and engine (stub backend)."""
    path = workdir / f"mem-{n}.jsonl"
    write_prompts(path, n)
    tracemalloc.start()
    files = resolve_inputs(str(path))
    ledger = IdLedger()
    engine = RequestEngine(
        StubBackend(),
        AdaptiveLimiter(28, concurrency=4, max_instances=7),
        max_retries=3,
        backoff_initial_seconds=0.1,
        backoff_max_seconds=1,
        attempt_timeout_seconds=10,
    )

    async def run() -> None:
        for shard in plan_shards(
            files, ledger, PlanStats(), shard_size=1000, retry_errors=False, max_line_bytes=1 << 20
        ):
            outcomes = await asyncio.gather(*(engine.run(r) for r in shard.requests))
            assert all(o.ok for o in outcomes)

    asyncio.run(run())
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    ledger.close()
    path.unlink()
    return peak


def main() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    workdir = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    env = {"OLLAMA_NUM_PARALLEL": str(S * I), "OLLAMA_SIM_SERVICE_SECONDS": str(T)}
    ideal = N * T / (S * I)
    print(f"sim: T={T}s per request, S={S} slots x I={I} instances, N={N}; ideal {ideal:.1f} s")
    with (
        prefect_test_harness(server_startup_timeout=180),
        running_ollama_server(engine="sim", models=["gemma2:9b"], env=env) as server,
    ):
        wall, cpu = bench_flow(server.base_url, workdir)
        print(f"batch_inference: makespan {wall:.1f} s, efficiency {ideal / wall:.3f} (goal 0.95)")
        print(f"client CPU: {cpu / N * 1000:.2f} ms per prompt (whole flow process, incl. Prefect)")
        seq = bench_sequential(server.base_url)
        print(
            f"sequential ollama.Client loop: ~{seq:.0f} s (measured {SAMPLE_SEQ}, extrapolated); "
            f"batch is {seq / wall:.1f}x faster"
        )
        per_task = bench_task_map(server.base_url)
        print(
            f"one Prefect task per prompt (task.map, {S * I} threads): ~{per_task:.0f} s "
            f"(measured {SAMPLE_MAP}, extrapolated); batch is {per_task / wall:.1f}x faster"
        )
    small = peak_memory(10_000, workdir)
    big_n = 1_000_000 if "--million" in sys.argv else 100_000
    big = peak_memory(big_n, workdir)
    print(
        f"peak traced memory (stub backend, no HTTP): 10k prompts {small:.1f} MiB, "
        f"{big_n:,} prompts {big:.1f} MiB; ratio {big / small:.2f} (goal ~1)"
    )


if __name__ == "__main__":
    main()
