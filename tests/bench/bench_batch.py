"""Batch benchmark: ``./dev bench`` or ``.venv/bin/python tests/bench/bench_batch.py [--quick]``.

Against the sim engine with a fixed service time T per request on S slots × I instances (one sim
server with S·I slots stands in for I instances: the batch client only sees slots):

1. the request engine alone (no Prefect) over the official ``ollama.AsyncClient`` (httpx) against
   its aiohttp backend, at the stress T: why the batch speaks Ollama's API through aiohttp;
2. the makespan of N prompts through ``batch_inference`` against the ideal N·T/(S·I) (goal ≥ 0.95),
   and beside it the floor: a bare aiohttp loop with S·I workers (no engine, no Prefect), which is
   what this machine's round trip allows when the sim server shares the client's 2 cores. T is
   0.5 s (a 9B model on an L4 takes seconds per answer, so this is still the hard case) and, as a
   stress row, 0.1 s, where the ~5 ms round trip alone caps any client near 0.94;
3. client CPU time per prompt (the whole flow process, Prefect included);
4. the same work by a sequential loop over the official ``ollama`` client and by one Prefect task
   per prompt (``task.map``, S·I threads), each measured on a sample and extrapolated;
5. peak RSS of ``batch_inference`` over 10,000 and 1,000,000 prompts (``--quick``: 100,000), each
   in a fresh process with an instant stub backend, so only the client's own memory grows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emulator.ollama.launcher import running_ollama_server
from tasks.batch.backends import OllamaBackend
from tasks.batch.engine import RequestEngine
from tasks.batch.lanes import Lane
from tasks.batch.limiter import AdaptiveLimiter
from tasks.batch.records import Completion, PromptRequest

MODEL = "gemma2:9b"
SAMPLE_SEQ, SAMPLE_MAP, ENGINE_N = 40, 200, 3000


def write_prompts(path: Path, n: int) -> None:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(
                json.dumps({"id": f"p{i}", "prompt": f"Why is the sky blue ({i})?"}) + "\n"
            )


def sim(service_seconds: float, slots: int) -> Any:
    env = {"OLLAMA_NUM_PARALLEL": str(slots), "OLLAMA_SIM_SERVICE_SECONDS": str(service_seconds)}
    return running_ollama_server(engine="sim", models=[MODEL], env=env)


def bench_flow(url: str, workdir: Path, n: int, in_flight: int) -> tuple[float, float]:
    from flows.batch import BatchParams, batch_inference

    name = f"in-{time.monotonic_ns()}"
    write_prompts(workdir / f"{name}.jsonl", n)
    params = BatchParams(
        input=str(workdir / f"{name}.jsonl"),
        output=str(workdir / f"out-{name}"),
        target=url,
        in_flight=in_flight,
    )
    cpu, wall = time.process_time(), time.perf_counter()
    manifest = asyncio.run(batch_inference(params))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert manifest["counts"]["succeeded"] == n, manifest["counts"]
    return wall, cpu


def bench_floor(url: str, n: int, workers: int) -> float:
    """Makespan of a bare aiohttp loop: ``workers`` coroutines, each one request after another."""
    import aiohttp

    async def run() -> None:
        todo = iter(range(n))
        connector = aiohttp.TCPConnector(limit=workers)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                for i in todo:
                    body = {"model": MODEL, "prompt": f"q {i}", "stream": False}
                    async with session.post(f"{url}/api/generate", json=body) as response:
                        await response.read()

            await asyncio.gather(*(worker() for _ in range(workers)))

    start = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - start


def bench_sequential(url: str, n: int) -> float:
    import ollama

    client = ollama.Client(host=url)
    start = time.perf_counter()
    for i in range(SAMPLE_SEQ):
        client.generate(MODEL, f"Why is the sky blue ({i})?")
    return (time.perf_counter() - start) / SAMPLE_SEQ * n


def bench_task_map(url: str, n: int, workers: int) -> float:
    import ollama
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    @task
    def one(i: int) -> int:
        return ollama.Client(host=url).generate(MODEL, f"q {i}").eval_count or 0

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def per_prompt(count: int) -> int:
        return sum(one.map(range(count)).result())

    start = time.perf_counter()
    per_prompt(SAMPLE_MAP)
    return (time.perf_counter() - start) / SAMPLE_MAP * n


class OfficialClientBackend:
    """The baseline: the same requests through the official ``ollama.AsyncClient`` (httpx)."""

    def __init__(self, host: str, max_connections: int) -> None:
        import httpx
        import ollama

        self._client = ollama.AsyncClient(
            host=host,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def complete(self, request: PromptRequest) -> Completion:
        answer = await self._client.generate(MODEL, request.prompt or "")
        return Completion(answer.response, answer.model or MODEL, answer.done_reason)

    async def aclose(self) -> None:
        await self._client.close()


def bench_engine(url: str, backend_kind: str, in_flight: int) -> tuple[float, float]:
    """(makespan, client CPU s) of ENGINE_N prompts through the request engine alone."""

    async def run() -> None:
        backend: Any = (
            OfficialClientBackend(url, in_flight)
            if backend_kind == "official"
            else OllamaBackend(
                url,
                MODEL,
                connect_timeout_seconds=10,
                read_timeout_seconds=60,
                tokens=None,
                max_connections=in_flight,
            )
        )
        engine = RequestEngine(
            [
                Lane(
                    url, backend, AdaptiveLimiter(in_flight, concurrency=in_flight, max_instances=1)
                )
            ],
            max_retries=3,
            backoff_initial_seconds=0.1,
            backoff_max_seconds=1,
            attempt_timeout_seconds=60,
        )
        requests = [PromptRequest(f"p{i}", "f", i, 1, prompt=f"q {i}") for i in range(ENGINE_N)]
        try:
            outcomes = await asyncio.gather(*(engine.run(r) for r in requests))
        finally:
            await engine.aclose()
        assert all(o.ok for o in outcomes)

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - wall, time.process_time() - cpu


def peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss`` it starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(n: int) -> None:
    """In a fresh process: ``batch_inference`` over n prompts with an instant stub backend."""
    from flows.batch import BatchParams, batch_inference
    from tasks.batch import steps

    class StubBackend:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def complete(self, request: PromptRequest) -> Completion:
            return Completion("stub answer", "stub", "stop", prompt_eval_count=5, eval_count=2)

        async def aclose(self) -> None:
            return None

    steps.OllamaBackend = StubBackend  # type: ignore[misc,assignment]
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    write_prompts(workdir / "in.jsonl", n)
    before = peak_rss_mib()
    start = time.perf_counter()
    params = BatchParams(
        input=str(workdir / "in.jsonl"),
        output=str(workdir / "out"),
        target="http://127.0.0.1:9",
        in_flight=28,
    )
    manifest = asyncio.run(batch_inference(params))
    assert manifest["counts"]["succeeded"] == n, manifest["counts"]
    peak = peak_rss_mib()
    print(json.dumps({"before": before, "peak": peak, "seconds": time.perf_counter() - start}))


def bench_memory(n: int, api_url: str) -> dict[str, float]:
    env = {**os.environ, "PREFECT_API_URL": api_url}
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=2000, memory at 100,000")
    parser.add_argument("--n", type=int, default=None, help="prompts (default 10,000)")
    parser.add_argument("--service-seconds", type=float, default=0.5, help="T (default 0.5)")
    parser.add_argument("--stress-seconds", type=float, default=0.1, help="the stress row's T")
    parser.add_argument("--slots", type=int, default=4, help="S: slots per instance")
    parser.add_argument("--instances", type=int, default=7, help="I: instances")
    parser.add_argument("--memory-n", type=int, default=None, help="the large memory run")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    n = args.n or (2_000 if args.quick else 10_000)
    big_n = args.memory_n or (100_000 if args.quick else 1_000_000)
    slots = args.slots * args.instances
    workdir = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    print(f"sim: S={args.slots} slots x I={args.instances} instances, N={n:,} prompts")
    with sim(args.stress_seconds, slots) as server:
        # Alternating, best of two each, before the Prefect server starts: no background work.
        runs = [bench_engine(server.base_url, kind, slots) for kind in ["official", "aiohttp"] * 2]
        official, ours = min(runs[0::2]), min(runs[1::2])
    ideal = ENGINE_N * args.stress_seconds / slots
    print(
        f"request engine alone, {ENGINE_N} prompts at T={args.stress_seconds}s: official "
        f"ollama.AsyncClient (httpx) efficiency {ideal / official[0]:.3f}, "
        f"{official[1] / ENGINE_N * 1000:.2f} ms CPU/prompt | aiohttp backend "
        f"{ideal / ours[0]:.3f}, {ours[1] / ENGINE_N * 1000:.2f} ms CPU/prompt "
        f"({official[1] / ours[1]:.1f}x less CPU)"
    )
    with prefect_test_harness(server_startup_timeout=180):
        walls: dict[float, float] = {}
        for t in (args.service_seconds, args.stress_seconds):
            ideal = n * t / slots
            with sim(t, slots) as server:
                wall, cpu = bench_flow(server.base_url, workdir, n, slots)
                floor = bench_floor(server.base_url, n, slots)
            walls[t] = wall
            print(
                f"T={t}s: ideal {ideal:.1f} s | batch_inference {wall:.1f} s, efficiency "
                f"{ideal / wall:.3f} (goal 0.95) | bare aiohttp loop (floor) {floor:.1f} s, "
                f"efficiency {ideal / floor:.3f} | client CPU {cpu / n * 1000:.2f} ms/prompt"
            )
        wall = walls[args.service_seconds]
        with sim(args.service_seconds, slots) as server:
            seq = bench_sequential(server.base_url, n)
            print(
                f"T={args.service_seconds}s, sequential ollama.Client loop: ~{seq:.0f} s (measured "
                f"{SAMPLE_SEQ}, extrapolated); batch_inference is {seq / wall:.1f}x faster"
            )
            per_task = bench_task_map(server.base_url, n, slots)
            print(
                f"T={args.service_seconds}s, one Prefect task per prompt (task.map, {slots} "
                f"threads): ~{per_task:.0f} s (measured {SAMPLE_MAP}, extrapolated); "
                f"batch_inference is {per_task / wall:.1f}x faster"
            )
        api_url = str(PREFECT_API_URL.value())
        small, big = bench_memory(10_000, api_url), bench_memory(big_n, api_url)
    print(
        f"peak RSS of batch_inference (stub backend, fresh process): 10,000 prompts "
        f"{small['peak']:.0f} MiB ({small['peak'] - small['before']:.0f} MiB above start), "
        f"{big_n:,} prompts {big['peak']:.0f} MiB ({big['peak'] - big['before']:.0f} MiB above "
        f"start, {big['seconds']:.0f} s); ratio {big['peak'] / small['peak']:.2f} (goal ~1)"
    )


if __name__ == "__main__":
    main()
