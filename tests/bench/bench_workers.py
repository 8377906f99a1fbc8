"""Workers benchmark: ``./dev bench`` or ``.venv/bin/python tests/bench/bench_workers.py [--n N]``.

One worker against two when the client is the bottleneck: a sim server with many slots and no
service time (``OLLAMA_SIM_SERVICE_SECONDS=0``, short answers), so each prompt costs the service
far less time than it costs the batch client (JSON, HTTP, records, shards: ~1.3 ms of CPU). The
same N prompts run through ``batch_inference(workers=1)`` (one process sends everything) and
``batch_inference(workers=2)`` (two flow runs of ``batch-shard`` on two process workers, against
a temporary Prefect server, with ``batch-shard`` deployed from prefect.yaml), alternating, best
of two each; the goal is a makespan ratio ≥ 1.7.

Beside it: the fixed cost of a run with workers (a 100-prompt run: child flow runs scheduled,
processes started, planning twice), and the ceiling the machine allows. With c the client's and
s the server's CPU per prompt, one client is capped at 1/c prompts/s and two clients at
cores/(c + s) — on 2 cores a ratio of 2c/(c + s), below 1.7 whenever s > 0.18·c.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from emulator.ollama.launcher import OllamaServer, running_ollama_server  # noqa: E402
from tasks.processes import stop_process  # noqa: E402

MODEL = "gemma2:9b"
POOL = "bench-workers"


def write_prompts(path: Path, n: int) -> None:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"id": f"p{i}", "prompt": f"Why is the sky blue ({i})?"}))
            handle.write("\n")


def server_cpu(server: OllamaServer) -> float:
    """CPU seconds the sim server process has used so far (user + system)."""
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_batch(
    server: OllamaServer, workdir: Path, n: int, workers: int, in_flight: int, shard_size: int = 500
) -> dict[str, Any]:
    from flows.batch import BatchParams, batch_inference

    name = f"w{workers}-{time.monotonic_ns()}"
    write_prompts(workdir / f"{name}.jsonl", n)
    out = workdir / f"out-{name}"
    params = BatchParams(
        input=str(workdir / f"{name}.jsonl"),
        output=str(out),
        target=server.base_url,
        in_flight=in_flight,
        shard_size=shard_size,
    )
    cpu, server_before, wall = time.process_time(), server_cpu(server), time.perf_counter()
    manifest = asyncio.run(batch_inference(params, workers=workers))
    wall = time.perf_counter() - wall
    assert manifest["counts"]["succeeded"] == n, manifest["counts"]
    cpu = time.process_time() - cpu
    children = [json.loads(p.read_text()) for p in (out / "parts").glob("*.json")]
    assert len(children) == (workers if workers > 1 else 0)
    return {
        "wall": wall,
        "client_cpu": cpu + sum(c["cpu_seconds"] for c in children),
        "server_cpu": server_cpu(server) - server_before,
        "worker_pids": sorted(c["parent_pid"] for c in children),
    }


def start_workers(api: str, logs: Path) -> list[subprocess.Popen[bytes]]:
    import httpx
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    body = {"name": POOL, "type": "process", "base_job_template": template}
    response = httpx.post(f"{api}/work_pools/", json=body, timeout=30)
    assert response.status_code in (201, 409), response.text
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    argv = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "batch-shard"]
    subprocess.run(
        [*argv, "--pool", POOL], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300
    )
    procs = []
    for k in (1, 2):
        argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
        argv += ["--type", "process", "--name", f"bench-{k}", "--limit", "1"]
        with (logs / f"worker-{k}.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="prompts per run (default 20,000)")
    parser.add_argument("--slots", type=int, default=64, help="sim slots = in flight (64)")
    args = parser.parse_args()
    for key, value in {
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": tempfile.mkdtemp(prefix="bench-workers-home-"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }.items():
        os.environ.setdefault(key, value)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    workdir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    sim_env = {
        "OLLAMA_NUM_PARALLEL": str(args.slots),
        "OLLAMA_SIM_SERVICE_SECONDS": "0",
        "OLLAMA_SIM_RESPONSE_TOKENS": "4",
    }
    print(f"sim: {args.slots} slots, no service time; N={args.n:,} prompts; {os.cpu_count()} cores")
    with (
        running_ollama_server(engine="sim", models=[MODEL], env=sim_env) as server,
        prefect_test_harness(server_startup_timeout=180),
    ):
        api = str(PREFECT_API_URL.value())
        os.environ["PREFECT_API_URL"] = api
        procs = start_workers(api, workdir)
        try:
            fixed = run_batch(
                server, workdir, 100, 2, args.slots, shard_size=50
            )  # also warms both workers
            runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for workers in (1, 2, 1, 2):
                runs[workers].append(run_batch(server, workdir, args.n, workers, args.slots))
                last = runs[workers][-1]
                print(f"  workers={workers}: {last['wall']:.1f} s", flush=True)
        finally:
            for proc in procs:
                stop_process(proc, grace=10, signals=(signal.SIGINT, signal.SIGTERM), group=True)
    one, two = (min(runs[w], key=lambda r: r["wall"]) for w in (1, 2))
    assert len(set(two["worker_pids"])) == 2, "both workers must have run a part"
    c, s = one["client_cpu"] / args.n, one["server_cpu"] / args.n
    cores = os.cpu_count() or 1
    ceiling = min(2.0, cores / (c + s) * c)
    print(
        f"workers=1: {one['wall']:.1f} s ({args.n / one['wall']:.0f} prompts/s); "
        f"workers=2: {two['wall']:.1f} s ({args.n / two['wall']:.0f} prompts/s); "
        f"ratio {one['wall'] / two['wall']:.2f} (goal ≥ 1.7)"
    )
    print(
        f"fixed cost of a run with 2 workers (100 prompts): {fixed['wall']:.1f} s; "
        f"ratio without it {one['wall'] / max(0.1, two['wall'] - fixed['wall']):.2f}"
    )
    print(
        f"CPU per prompt: client {c * 1e3:.2f} ms, sim server {s * 1e3:.2f} ms; "
        f"the ceiling on {cores} cores: {ceiling:.2f}"
    )


if __name__ == "__main__":
    main()
