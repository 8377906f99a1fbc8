"""Benchmark: a no-op redeploy against a full deploy, on the emulator, as a ratio.

    .venv/bin/python tests/bench/bench_deploy.py [--repeats 3]

Starts emulator.gcp (sim engine) and a Prefect test server, runs one full deploy (build, create,
smoke test), then no-op redeploys (nothing changed: no build, no update), and prints the times and
the ratio no-op / full. The baseline is the full deploy measured in the same process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--repeats", type=int, default=3, help="no-op redeploys to time")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))

    from emulator.gcp import running_gcp_emulator

    with running_gcp_emulator(
        Path(tempfile.mkdtemp(prefix="bench-gcp-")), ollama_engine="sim"
    ) as emu:
        os.environ.update(emu.env)
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            from flows.deploy import DeployParameters, deploy

            params = DeployParameters(service="ollama-bench")
            started = time.perf_counter()
            first = deploy(params)
            full = time.perf_counter() - started
            assert first["actions"]["image"] == "built", first["actions"]
            noops = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                again = deploy(params)
                noops.append(time.perf_counter() - started)
                assert again["actions"]["service"] == "unchanged", again["actions"]
                assert again["actions"]["image"] == "skipped (tag exists)", again["actions"]
    noop = statistics.median(noops)
    print(f"full deploy (build + create + smoke test): {full:7.2f} s")
    runs = [round(n, 2) for n in noops]
    print(f"no-op redeploy, median of {len(noops)}:         {noop:7.2f} s  {runs}")
    print(f"ratio no-op / full:                         {noop / full:7.3f}")


if __name__ == "__main__":
    main()
