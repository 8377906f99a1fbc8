"""Scale-out benchmark on the emulator (sim engine): ``.venv/bin/python tests/bench/bench_scale.py``
[--quick].

Side by side in one run, on one emulator, against the same private service deployed (by one
``deploy`` with ``regions``) in four emulated regions of equal slots (M instances × C concurrency,
each request holding its slot T seconds):

1. Deploy side: ``deploy`` of a new service in one region, then of one in four regions at once
   (the image already built; each region preflighted against its own quota and deployed by its own
   ``deploy-region`` task in parallel). Prints the ratio four / one (goal: near 1, not 4).
2. Throughput, one region against two and four: the same N prompts as one batch whose targets
   are the service in 1, 2 and 4 regions. Prints prompts/s in the steady state (from 10 % to 90 %
   of the prompts written: target resolution and the last wave left out) and over the whole
   ``batch_inference`` call, and the ratios to one region (goal: ≥ 1.9 and ≥ 3.6, steady state),
   with each region's share of the answers.
3. Region killed at 50 % of a run: one batch over two regions, undisturbed and then with the
   first region's service killed (``POST /_emulator/outage``, connections refused; requests in
   flight cut) once half of the prompts are written. Prints the prompts lost (goal 0: every id
   exactly once) and the makespan ratio killed / undisturbed (goal <= 1.6; two equal regions make
   the ideal 1.5: the second half on half the slots).
4. Teardown of every service in every region: what is left (goal: nothing).

Every baseline (one region; the undisturbed run) is measured in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

REGIONS = ("us-central1", "europe-west4")
ALL_REGIONS = ["us-central1", "europe-west4", "europe-west1", "us-east4"]  # L4 regions, no invite
SERVICE = "ollama-scale"


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


def bench_regions(workdir: Path, n: int, args: argparse.Namespace) -> None:
    """Sections 1 and 2: deploy in one region vs four; throughput over 1, 2 and 4 regions."""
    timed_deploy("scale-build", ALL_REGIONS[:1], args)  # builds the image; not compared
    one = timed_deploy("scale-one", ALL_REGIONS[1:2], args)
    four = timed_deploy(SERVICE, ALL_REGIONS, args)
    print(f"deploy of a new service, 1 region: {one:.1f} s; 4 regions at once: {four:.1f} s")
    print(f"deploy ratio 4 regions / 1 region: {four / one:.2f} (goal: near 1, not 4)")
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
        print(
            f"throughput ratio {count} regions / 1: {steady:.2f} steady (goal >= {goal}), "
            f"{whole:.2f} whole run"
        )


def teardown_all(base_url: str) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=240, scale N=400")
    parser.add_argument("--n", type=int, default=None, help="prompts (default 600)")
    parser.add_argument(
        "--scale-n", type=int, default=None, help="prompts per 1/2/4-region run (default 1200)"
    )
    # T of a second keeps the run bound by the slots, not by the client's and the emulator's
    # CPU (every request crosses the emulated ingress, a Python proxy, on the same 2 cores).
    parser.add_argument("--service-seconds", type=float, default=1.0, help="T (default 1.0)")
    parser.add_argument("--instances", type=int, default=2, help="M per region (default 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="C (default 4)")
    args = parser.parse_args()
    n = args.n or (240 if args.quick else 600)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    slots = args.instances * args.concurrency

    import httpx

    from emulator.gcp import running_gcp_emulator

    sim_env = {"OLLAMA_SIM_SERVICE_SECONDS": str(args.service_seconds)}
    with running_gcp_emulator(workdir / "gcp", ollama_engine="sim", sim_env=sim_env) as emu:
        os.environ.update(emu.env)

        def control(path: str, body: dict[str, Any]) -> None:
            url = f"{emu.base_url}/_emulator/{path}"
            httpx.post(url, json=body, timeout=120).raise_for_status()

        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            bench_regions(workdir, args.scale_n or (400 if args.quick else 1200), args)
            print(
                f"two regions x {slots} slots (M={args.instances} x C={args.concurrency}), "
                f"T={args.service_seconds}s, N={n:,} prompts; ideal makespan "
                f"{n * args.service_seconds / (2 * slots):.1f} s undisturbed"
            )
            calm = run_batch(workdir, "calm", n, None, control)
            killed = run_batch(workdir, "killed", n, 0.5, control)
            teardown_all(emu.base_url)
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
    print(f"makespan ratio killed / undisturbed: {ratio:.2f} (goal <= 1.6, ideal 1.5)")


if __name__ == "__main__":
    main()
