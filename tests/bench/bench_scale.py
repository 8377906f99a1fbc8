"""Scale-out benchmark on the emulator (sim engine): ``./dev bench`` or
``.venv/bin/python tests/bench/bench_scale.py [--quick] [--sections ...]``.

Side by side in one run, every baseline measured in the same process:

1. Deploy side (``regions``): ``deploy`` of a new service in one region, then of one in four
   regions at once (the image already built; each region preflighted against its own quota and
   deployed by its own ``deploy-region`` task in parallel). Prints the ratio four / one (goal: near
   1, not 4).
2. Throughput over regions (``regions``), against the same private service deployed in four
   emulated regions of equal slots (M instances × C concurrency, each request holding its slot T
   seconds): the same N prompts as one batch whose targets are the service in 1, 2 and 4 regions.
   Prints prompts/s in the steady state (from 10 % to 90 % of the prompts written: target
   resolution and the last wave left out) and over the whole ``batch_inference`` call, and the
   ratios to one region (goal: ≥ 1.9 and ≥ 3.6, steady state), with each region's share.
3. Region killed at 50 % of a run (``killed``): one batch over two regions, undisturbed and then
   with the first region's service killed (``POST /_emulator/outage``, connections refused;
   requests in flight cut) once half of the prompts are written. Prints the prompts lost (goal 0:
   every id exactly once) and the makespan ratio killed / undisturbed (goal <= 1.6; two equal
   regions make the ideal 1.5: the second half on half the slots).
4. Teardown of every service in every region (with ``regions``): what is left (goal: nothing).
5. Workers (``workers``): one worker against two when the client is the bottleneck — a bare sim
   server with many slots and no service time, so each prompt costs the service far less than it
   costs the batch client (JSON, HTTP, records, shards). The same N prompts run through
   ``batch_inference(workers=1)`` (one process sends everything) and ``workers=2`` (two flow runs
   of ``batch-shard``, deployed from prefect.yaml, on two process workers), alternating, best of
   two each; the goal is a makespan ratio ≥ 1.7. Beside it: the ratio while the children send
   (their process starts left out: each child flow run is scheduled, then its process imports
   Prefect twice, the supervisor's and the engine's, and plans), and the ceiling the machine
   allows. With c the client's and s the sim server's CPU per prompt, one
   client is capped at 1/c prompts/s and two at cores/(c + s) — on 2 cores a ratio of
   2c/(c + s), below 1.7 whenever s > 0.18·c: the client, the server and both workers share the
   cores, so the ratio printed is what this machine allows, not what separate machines
   (Cloud Run or Kubernetes workers) would.

The ratios are printed again together at the end.
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

REGIONS = ("us-central1", "europe-west4")
ALL_REGIONS = ["us-central1", "europe-west4", "europe-west1", "us-east4"]  # L4 regions, no invite
SERVICE = "ollama-scale"
SECTIONS = ("regions", "killed", "workers")
MODEL = "gemma2:9b"
POOL = "bench-workers"


def write_prompts(path: Path, n: int) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"p{i}" for i in range(n)]
    path.write_text(
        "".join(json.dumps({"id": i, "prompt": f"Why is the sky blue ({i})?"}) + "\n" for i in ids)
    )
    return ids


def results_written(output: Path) -> int:
    """Result records in the shards written so far."""
    return sum(sum(1 for _ in shard.open()) for shard in (output / "results").glob("*.jsonl"))


def read_ids(output: Path) -> Counter[str]:
    ids: Counter[str] = Counter()
    for shard in (output / "results").glob("*.jsonl"):
        ids.update(json.loads(line)["id"] for line in shard.open())
    return ids


def run_batch(
    workdir: Path, name: str, n: int, kill_at: float | None, control: Any
) -> dict[str, Any]:
    """One batch over both regions; with ``kill_at``, the first region dies once that share of
    the prompts is written. Returns makespan, lost and duplicated ids, and the manifest."""
    from flows.batch import BatchParams, batch_inference

    ids = write_prompts(workdir / f"in-{name}" / "p.jsonl", n)
    output = workdir / f"out-{name}"
    params = BatchParams(
        input=str(workdir / f"in-{name}"),
        output=str(output),
        target=[SERVICE, f"{REGIONS[1]}/{SERVICE}"],
        shard_size=max(1, n // 40),
        backoff_initial_seconds=0.1,
        backoff_max_seconds=1.0,
        circuit_cooldown_seconds=30,
    )
    started = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(lambda: asyncio.run(batch_inference(params)))
        if kill_at is not None:
            while not run.done() and results_written(output) < kill_at * n:
                time.sleep(0.05)
            control("outage", {"location": REGIONS[0], "service": SERVICE, "outage": "refused"})
        manifest = run.result()
    makespan = time.perf_counter() - started
    if kill_at is not None:
        control("outage", {"location": REGIONS[0], "service": SERVICE, "outage": None})
    found = read_ids(output)
    lost = sum(1 for i in ids if found[i] == 0)
    duplicated = sum(1 for i in ids if found[i] > 1)
    return {"makespan": makespan, "lost": lost, "duplicated": duplicated, "manifest": manifest}


def timed_deploy(service: str, regions: list[str], args: argparse.Namespace) -> float:
    """Seconds of one ``deploy`` of ``service`` in ``regions``, every region deployed."""
    from flows.deploy import DeployParameters, deploy

    params = DeployParameters(
        service=service,
        regions=regions,
        max_instances=args.instances,
        concurrency=args.concurrency,
        run_smoke_test=False,
    )
    started = time.perf_counter()
    statuses = {r: done["status"] for r, done in deploy(params)["regions"].items()}
    assert all(s.startswith("deployed") for s in statuses.values()), statuses
    return time.perf_counter() - started


def steady_batch(workdir: Path, regions: list[str], n: int) -> dict[str, Any]:
    """One batch of ``n`` prompts over the service in ``regions``: its whole time, the time
    from 10 % to 90 % of the prompts written, and each region's share of the answers."""
    from flows.batch import BatchParams, batch_inference

    name = f"regions-{len(regions)}"
    write_prompts(workdir / f"in-{name}" / "p.jsonl", n)
    output = workdir / f"out-{name}"
    params = BatchParams(
        input=str(workdir / f"in-{name}"),
        output=str(output),
        target=[f"{region}/{SERVICE}" for region in regions],
        shard_size=max(1, n // 50),
    )
    marks: dict[float, float] = {}
    started = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(lambda: asyncio.run(batch_inference(params)))
        while not run.done():
            written = results_written(output)
            for mark in (0.1, 0.9):
                if mark not in marks and written >= mark * n:
                    marks[mark] = time.perf_counter()
            time.sleep(0.1)
        manifest = run.result()
    whole = time.perf_counter() - started
    assert manifest["counts"]["succeeded"] == n, manifest["counts"]
    steady = marks.get(0.9, whole) - marks.get(0.1, started)
    ok = {t["name"].split("/")[0]: t["ok"] for t in manifest["targets"]}
    p50 = max(t["latency_s"]["p50"] or 0 for t in manifest["targets"])
    backoffs = sum(t["backoffs"] for t in manifest["targets"])
    return {
        "whole": whole,
        "steady": 0.8 * n / steady,
        "rate": n / whole,
        "ok": ok,
        "p50": p50,
        "backoffs": backoffs,
    }


def bench_regions(workdir: Path, n: int, args: argparse.Namespace) -> dict[str, str]:
    """Sections 1 and 2: deploy in one region vs four; throughput over 1, 2 and 4 regions."""
    timed_deploy("scale-build", ALL_REGIONS[:1], args)  # builds the image; not compared
    one = timed_deploy("scale-one", ALL_REGIONS[1:2], args)
    four = timed_deploy(SERVICE, ALL_REGIONS, args)
    print(f"deploy of a new service, 1 region: {one:.1f} s; 4 regions at once: {four:.1f} s")
    ratios = {"deploy 4 regions / 1": f"{four / one:.2f} (goal: near 1, not 4)"}
    print(f"deploy ratio 4 regions / 1 region: {ratios['deploy 4 regions / 1']}")
    slots = args.instances * args.concurrency
    runs = {}
    for count in (1, 2, 4):
        runs[count] = run = steady_batch(workdir, ALL_REGIONS[:count], n)
        shares = ", ".join(f"{r} {k / n:.0%}" for r, k in run["ok"].items())
        print(
            f"{count} region(s), {count * slots} slots: {run['steady']:.1f} prompts/s steady, "
            f"{run['rate']:.1f} over the whole {run['whole']:.1f} s (ideal "
            f"{count * slots / args.service_seconds:.1f}); answers: {shares}; latency p50 "
            f"{run['p50']:.2f} s, {run['backoffs']} back-offs"
        )
    for count, goal in ((2, 1.9), (4, 3.6)):
        steady = runs[count]["steady"] / runs[1]["steady"]
        whole = runs[count]["rate"] / runs[1]["rate"]
        key = f"throughput {count} regions / 1"
        ratios[key] = f"{steady:.2f} steady (goal >= {goal}), {whole:.2f} whole run"
        print(f"{key}: {ratios[key]}")
    return ratios


def bench_killed(workdir: Path, n: int, args: argparse.Namespace, control: Any) -> dict[str, str]:
    """Section 3: a batch over two regions, undisturbed and with the first killed at 50 %."""
    slots = args.instances * args.concurrency
    print(
        f"two regions x {slots} slots (M={args.instances} x C={args.concurrency}), "
        f"T={args.service_seconds}s, N={n:,} prompts; ideal makespan "
        f"{n * args.service_seconds / (2 * slots):.1f} s undisturbed"
    )
    calm = run_batch(workdir, "calm", n, None, control)
    killed = run_batch(workdir, "killed", n, 0.5, control)
    dead = killed["manifest"]["targets"][0]
    ratio = killed["makespan"] / calm["makespan"]
    print(
        f"undisturbed: {calm['makespan']:.1f} s, lost {calm['lost']}, duplicated "
        f"{calm['duplicated']}"
    )
    print(
        f"region killed at 50 %: {killed['makespan']:.1f} s, lost {killed['lost']} (goal 0), "
        f"duplicated {killed['duplicated']}; {REGIONS[0]} attempts failed {dead['failed']} "
        f"(all re-sent: {dead['retried']}), circuit opened {dead['circuit_opens']}x"
    )
    shares = ", ".join(f"{t['name']} {t['ok']}" for t in killed["manifest"]["targets"])
    print(f"answers by region in the killed run: {shares}")
    key = "makespan region killed at 50 % / undisturbed"
    print(f"{key}: {ratio:.2f} (goal <= 1.6, ideal 1.5)")
    return {key: f"{ratio:.2f} (goal <= 1.6, ideal 1.5), lost {killed['lost']} (goal 0)"}


def teardown_all(base_url: str) -> dict[str, str]:
    """Section 4: every service in every region torn down; what is left."""
    import httpx

    from flows.teardown import TeardownParameters, teardown

    teardown(TeardownParameters(service=SERVICE, regions=ALL_REGIONS))
    teardown(TeardownParameters(service="scale-one", regions=ALL_REGIONS[1:2]))
    teardown(TeardownParameters(service="scale-build", regions=ALL_REGIONS[:1]))
    backends = httpx.get(f"{base_url}/_emulator/state", timeout=30).json()["backends"]
    left = {
        "services": len(backends["cloud_run"]["services"]),
        "repositories": len(backends["artifact_registry"]["repositories"]),
    }
    print(f"left in any region after teardown: {left} (goal: nothing)")
    return {"left after teardown": f"{left} (goal: nothing)"}


# -- section 5: workers ----------------------------------------------------------------------


def server_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` has used so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def workers_batch(
    server: Any, workdir: Path, n: int, workers: int, in_flight: int, shard_size: int = 500
) -> dict[str, Any]:
    """One batch of ``n`` prompts against the bare sim server with ``workers``: its makespan, the
    CPU of the client processes (parent and children) and of the server."""
    from flows.batch import BatchParams, batch_inference

    name = f"w{workers}-{time.monotonic_ns()}"
    write_prompts(workdir / name / "p.jsonl", n)
    out = workdir / f"out-{name}"
    params = BatchParams(
        input=str(workdir / name),
        output=str(out),
        target=server.base_url,
        in_flight=in_flight,
        shard_size=shard_size,
    )
    pid = server.process.pid
    cpu, server_before, wall = time.process_time(), server_cpu(pid), time.perf_counter()
    manifest = asyncio.run(batch_inference(params, workers=workers))
    wall = time.perf_counter() - wall
    assert manifest["counts"]["succeeded"] == n, manifest["counts"]
    cpu = time.process_time() - cpu
    children = [json.loads(p.read_text()) for p in (out / "parts").glob("*.json")]
    assert len(children) == (workers if workers > 1 else 0)
    return {
        "wall": wall,
        # From the first child's first request to the last one's last (their process starts
        # before it left out); one process: the whole run (its few seconds of set-up included).
        "send": max((c["send_started_at"] + c["send_seconds"] for c in children), default=wall)
        - min((c["send_started_at"] for c in children), default=0.0),
        "client_cpu": cpu + sum(c["cpu_seconds"] for c in children),
        "server_cpu": server_cpu(pid) - server_before,
        "worker_pids": sorted(c["parent_pid"] for c in children),
    }


def start_workers(api: str, logs: Path) -> list[subprocess.Popen[bytes]]:
    """``batch-shard`` deployed from prefect.yaml on a process pool, and two workers that run
    one flow run at a time each (so the two parts go one to each)."""
    import httpx
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    body = {"name": POOL, "type": "process", "base_job_template": template}
    response = httpx.post(f"{api}/work_pools/", json=body, timeout=60)
    assert response.status_code in (201, 409), response.text
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    argv = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "batch-shard"]
    subprocess.run(
        [*argv, "--pool", POOL], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600
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


def bench_workers(workdir: Path, n: int, slots: int) -> dict[str, str]:
    """Section 5: workers=1 against workers=2 when the client is the bottleneck."""
    from prefect.settings import PREFECT_API_URL

    from emulator.ollama.launcher import running_ollama_server
    from tasks.processes import stop_process

    sim_env = {
        "OLLAMA_NUM_PARALLEL": str(slots),
        "OLLAMA_SIM_SERVICE_SECONDS": "0",
        "OLLAMA_SIM_RESPONSE_TOKENS": "4",
    }
    cores = os.cpu_count() or 1
    print(f"workers: sim server, {slots} slots, no service time; N={n:,} prompts; {cores} cores")
    with running_ollama_server(engine="sim", models=[MODEL], env=sim_env) as server:
        procs = start_workers(str(PREFECT_API_URL.value()), workdir)
        try:
            workers_batch(server, workdir, 100, 2, slots, shard_size=50)  # warms both workers
            runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for workers in (1, 2, 1, 2):
                runs[workers].append(workers_batch(server, workdir, n, workers, slots))
                print(f"  workers={workers}: {runs[workers][-1]['wall']:.1f} s", flush=True)
        finally:
            for proc in procs:
                stop_process(proc, grace=10, signals=(signal.SIGINT, signal.SIGTERM), group=True)
    one, two = (min(runs[w], key=lambda r: r["wall"]) for w in (1, 2))
    assert len(set(two["worker_pids"])) == 2, "both workers must have run a part"
    c, s = one["client_cpu"] / n, one["server_cpu"] / n
    ceiling = min(2.0, cores / (c + s) * c)
    ratio = one["wall"] / two["wall"]
    sending = one["wall"] / two["send"]
    print(
        f"workers=1: {one['wall']:.1f} s ({n / one['wall']:.0f} prompts/s); "
        f"workers=2: {two['wall']:.1f} s ({n / two['wall']:.0f} prompts/s), of which "
        f"{two['send']:.1f} s from the children's first request to their last "
        f"({n / two['send']:.0f} prompts/s) and {two['wall'] - two['send']:.1f} s scheduling "
        f"and starting them (each imports Prefect twice) and merging"
    )
    print(
        f"CPU per prompt: client {c * 1e3:.2f} ms, sim server {s * 1e3:.2f} ms; "
        f"the ceiling 2c/(c+s) on {cores} cores: {ceiling:.2f}"
    )
    verdict = "met" if ratio >= 1.7 else f"not met: this machine's ceiling is {ceiling:.2f}"
    key = "throughput 2 workers / 1 (client-bound)"
    print(f"{key}: {ratio:.2f} makespan (goal >= 1.7, {verdict}); {sending:.2f} while sending")
    return {
        key: f"{ratio:.2f} makespan (goal >= 1.7, {verdict}); {sending:.2f} while sending "
        f"(process starts left out: {two['wall'] - two['send']:.1f} s of {two['wall']:.1f} s)"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller N in every section")
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="(default: all)"
    )
    parser.add_argument("--n", type=int, default=None, help="prompts, killed (default 600)")
    parser.add_argument(
        "--scale-n", type=int, default=None, help="prompts per 1/2/4-region run (default 1200)"
    )
    parser.add_argument(
        "--workers-n", type=int, default=None, help="prompts per workers run (default 20,000)"
    )
    parser.add_argument("--workers-slots", type=int, default=64, help="sim slots (default 64)")
    # T of a second keeps the run bound by the slots, not by the client's and the emulator's
    # CPU (every request crosses the emulated ingress, a Python proxy, on the same 2 cores).
    parser.add_argument("--service-seconds", type=float, default=1.0, help="T (default 1.0)")
    parser.add_argument("--instances", type=int, default=2, help="M per region (default 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="C (default 4)")
    args = parser.parse_args()
    for name in ("n", "scale_n", "workers_n", "workers_slots", "instances", "concurrency"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.service_seconds <= 0:
        parser.error(f"--service-seconds must be above 0, not {args.service_seconds}")
    for key, value in {
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": tempfile.mkdtemp(prefix="bench-scale-home-"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        # Under load the test server's SQLite reports "database is locked" with long tracebacks
        # from its own background services, which it retries: not the bench's errors.
        "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    }.items():
        os.environ.setdefault(key, value)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))

    import httpx

    from emulator.gcp import running_gcp_emulator

    ratios: dict[str, str] = {}
    sim_env = {"OLLAMA_SIM_SERVICE_SECONDS": str(args.service_seconds)}
    with running_gcp_emulator(workdir / "gcp", ollama_engine="sim", sim_env=sim_env) as emu:
        os.environ.update(emu.env)

        def control(path: str, body: dict[str, Any]) -> None:
            url = f"{emu.base_url}/_emulator/{path}"
            httpx.post(url, json=body, timeout=120).raise_for_status()

        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            os.environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())  # for the workers
            if "regions" in args.sections:
                scale_n = args.scale_n or (400 if args.quick else 1200)
                ratios |= bench_regions(workdir, scale_n, args)
            if "killed" in args.sections:
                if "regions" not in args.sections:  # the service in both regions
                    timed_deploy(SERVICE, list(REGIONS), args)
                ratios |= bench_killed(
                    workdir, args.n or (240 if args.quick else 600), args, control
                )
            if "regions" in args.sections:
                ratios |= teardown_all(emu.base_url)
            if "workers" in args.sections:
                workers_n = args.workers_n or (2_000 if args.quick else 20_000)
                ratios |= bench_workers(workdir, workers_n, args.workers_slots)
    print("\n== ratios, side by side ==")
    for key, value in ratios.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
