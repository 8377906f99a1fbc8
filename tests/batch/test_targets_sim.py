"""A batch over several targets, against sim servers: the split follows the slots, and a target
killed mid-run (SIGKILL: in-flight requests reset, new ones refused) costs no prompt.

The sims' own request logs are the judge of who served what, not the client's account."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator.ollama.launcher import OllamaServer
from flows.batch import BatchParams, batch_inference
from tests.batch.conftest import local, read_output, write_prompts


def served(server: OllamaServer) -> int:
    """Generation requests the server received (its own log)."""
    response = httpx.get(f"{server.base_url}/_emulator/requests", timeout=30)
    return len(response.json()["requests"])


def _params(tmp_path: Path, targets: list[str], **settings: Any) -> BatchParams:
    return BatchParams(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        target=targets,
        model="gemma2:9b",
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
        **settings,
    )


def test_requests_are_shared_in_proportion_to_slots(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    slow = {"OLLAMA_SIM_SERVICE_SECONDS": "0.04"}
    big, small = sim_server(parallel=4, **slow), sim_server(parallel=2, **slow)
    ids = write_prompts(tmp_path / "in" / "p.jsonl", 600)
    targets = [f"{big.base_url}#slots=4", f"{small.base_url}#slots=2"]
    manifest = asyncio.run(batch_inference(_params(tmp_path, targets, shard_size=100)))

    results, errors = read_output(local(tmp_path / "out"))
    assert sorted(r["id"] for r in results) == ids and errors == []
    by_server = {big.base_url: served(big), small.base_url: served(small)}
    assert sum(by_server.values()) == 600  # no attempt failed, none was sent twice
    for expected, url in ((2 / 3, big.base_url), (1 / 3, small.base_url)):
        assert abs(by_server[url] / 600 / expected - 1) <= 0.10, by_server
    reports = {t["uri"]: t for t in manifest["targets"]}
    for url, count in by_server.items():
        assert reports[url]["sent"] == reports[url]["ok"] == count
        assert reports[url]["failed"] == 0 and reports[url]["latency_s"]["p95"] is not None
    assert [reports[u]["slots"] for u in (big.base_url, small.base_url)] == [4, 2]
    assert manifest["service"]["in_flight"] == 6


@pytest.mark.slow
def test_a_target_killed_mid_run_costs_no_prompt(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    slow = {"OLLAMA_SIM_SERVICE_SECONDS": "0.05"}  # 400 prompts: ~3.5 s of work on 6 slots
    doomed, survivor = sim_server(parallel=3, **slow), sim_server(parallel=3, **slow)
    n = 400
    ids = write_prompts(tmp_path / "in" / "p.jsonl", n)
    targets = [f"{doomed.base_url}#slots=3", f"{survivor.base_url}#slots=3"]
    params = _params(tmp_path, targets, shard_size=50, circuit_cooldown_seconds=30)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(lambda: asyncio.run(batch_inference(params)))
        deadline = time.monotonic() + 120
        while served(doomed) < n // 6:  # a quarter of its share: the run is well under way
            assert not run.done() and time.monotonic() < deadline, "the run ended too early"
            time.sleep(0.05)
        doomed.process.kill()  # SIGKILL: connections reset, the port refuses
        manifest = run.result(timeout=300)

    results, errors = read_output(local(tmp_path / "out"))
    assert errors == []
    assert Counter(r["id"] for r in results) == Counter(ids)  # every id exactly once
    assert manifest["counts"] == {"total": n, "succeeded": n, "failed": 0, "skipped": 0}
    reports = {t["uri"]: t for t in manifest["targets"]}
    dead, alive = reports[doomed.base_url], reports[survivor.base_url]
    assert dead["failed"] >= 1 and dead["retried"] == dead["failed"]  # re-sent elsewhere
    assert dead["circuit_opens"] == 1 and dead["circuit"] != "closed"
    assert alive["failed"] == 0 and alive["ok"] > dead["ok"] and dead["ok"] + alive["ok"] == n
    assert alive["ok"] == served(survivor)
