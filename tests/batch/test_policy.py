"""The failure policy end to end: a run past its failure budget ends Failed (exit 1 through the
CLI) after writing everything; a poison prompt stops being sent after max_attempts_per_id runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from emulator.ollama.launcher import OllamaServer
from flows.batch import BatchParams, batch_inference
from tests.batch.conftest import local, read_output, write_prompts

ROOT = Path(__file__).resolve().parents[2]


def _script_faults(server: OllamaServer, kinds: list[str]) -> None:
    """The next ``len(kinds)`` generation requests meet these faults, in arrival order."""
    reply = httpx.post(server.base_url + "/_emulator/faults", json={"script": kinds}, timeout=10)
    reply.raise_for_status()


def _params(server: OllamaServer, inp: Path, out: Path, **kw: Any) -> BatchParams:
    return BatchParams(
        input=str(inp),
        output=str(out),
        target=server.base_url,
        in_flight=4,
        shard_size=25,
        max_retries=0,  # every fault exhausts the retries at once
        request_timeout_seconds=5,
        **kw,
    )


def test_three_percent_failed_ends_failed_with_exit_1_unless_the_budget_allows_it(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    write_prompts(tmp_path / "in.jsonl", 100)
    server = sim_server()
    _script_faults(server, ["500", "500", "503"])
    options = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]
    options += ["--target", server.base_url, "--max-retries", "0", "--in-flight", "4"]
    cli = subprocess.run(
        [sys.executable, "-m", "flows", "batch", *options],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 1, cli.stdout[-2000:] + cli.stderr[-2000:]
    assert "3 of 100 prompts sent failed" in cli.stderr
    assert "HTTP 500 ×2" in cli.stderr and "HTTP 503 ×1" in cli.stderr
    # Everything was written before the run failed: 97 results, 3 error records, the manifest.
    results, errors = read_output(local(tmp_path / "out"))
    assert (len(results), len(errors)) == (97, 3)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["failed"] == 3 and "max_failed_fraction" in manifest["failure"]
    assert manifest["this_run"]["error_kinds"] == {"HTTP 500": 2, "HTTP 503": 1}

    _script_faults(server, ["500", "500", "503"])
    params = _params(server, tmp_path / "in.jsonl", tmp_path / "out2", max_failed_fraction=0.05)
    state = asyncio.run(batch_inference(params, return_state=True))  # type: ignore[call-overload]
    assert state.is_completed(), state.message
    assert state.result()["counts"]["failed"] == 3 and state.result()["failure"] is None


def test_max_failed_and_max_input_errors(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    write_prompts(tmp_path / "in" / "p.jsonl", 20)
    (tmp_path / "in" / "bad.jsonl").write_text('{"id": "x", "prompt": "broken\n{"id": "y"}\n')
    server = sim_server()
    _script_faults(server, ["500"])
    params = _params(
        server, tmp_path / "in", tmp_path / "out", max_failed_fraction=1, max_input_errors=1
    )
    state = asyncio.run(batch_inference(params, return_state=True))  # type: ignore[call-overload]
    assert state.is_failed()
    assert "2 input lines could not be read (> max_input_errors 1)" in state.message
    assert "malformed JSON ×1" in state.message
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["failed"] == 3 and "max_failed" not in manifest["failure"]

    params = _params(
        server, tmp_path / "in", tmp_path / "out2", max_failed_fraction=1, max_failed=0
    )
    _script_faults(server, ["500"])
    state = asyncio.run(batch_inference(params, return_state=True))  # type: ignore[call-overload]
    assert state.is_failed() and "1 prompts failed (> max_failed 0)" in state.message


def test_a_poison_prompt_is_sent_at_most_max_attempts_per_id_runs(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    write_prompts(tmp_path / "in.jsonl", 1)
    server = sim_server()
    params = _params(
        server,
        tmp_path / "in.jsonl",
        tmp_path / "out",
        retry_errors=True,
        max_attempts_per_id=2,
        max_failed_fraction=1,
    )
    for tries in (1, 2):
        _script_faults(server, ["500"])
        manifest = asyncio.run(batch_inference(params))
        assert manifest["this_run"]["sent"] == 1 and manifest["counts"]["failed"] == 1
        newest = max(read_output(local(tmp_path / "out"))[1], key=lambda r: r["tries"])
        assert newest["tries"] == tries
    manifest = asyncio.run(batch_inference(params))  # the third run leaves it alone
    assert manifest["this_run"]["sent"] == 0 and manifest["this_run"]["exhausted_ids"] == 1
    assert manifest["counts"]["failed"] == 1
