"""Scale-out benchmark on the emulator (sim engine): ``.venv/bin/python tests/bench/bench_scale.py``
[--quick].

Region killed at 50 % of a run: the same private service deployed in two emulated regions of
equal slots (M instances × C concurrency, each request holding its slot T seconds), one batch of
N prompts over both, undisturbed and then with the first region's service killed (``POST
/_emulator/outage``, connections refused; requests in flight cut) once half of the prompts are
written. Prints the prompts lost (goal 0: every id exactly once) and the makespan ratio killed /
undisturbed (goal <= 1.6; two equal regions make the ideal 1.5: the second half on half the
slots). The undisturbed run is the baseline, measured in the same process.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=240")
    parser.add_argument("--n", type=int, default=None, help="prompts (default 600)")
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
            from flows.deploy import DeployParameters, deploy

            for region in REGIONS:
                deploy(
                    DeployParameters(
                        service=SERVICE,
                        region=region,
                        max_instances=args.instances,
                        concurrency=args.concurrency,
                        run_smoke_test=False,
                    )
                )
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
    print(f"makespan ratio killed / undisturbed: {ratio:.2f} (goal <= 1.6, ideal 1.5)")


if __name__ == "__main__":
    main()
