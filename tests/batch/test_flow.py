"""The flow end to end on local files against the sim engine (one Prefect test server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.artifacts import Artifact
from pydantic import ValidationError

from emulator.ollama.launcher import OllamaServer
from flows.batch import SUMMARY_KEY, BatchParams, batch_inference
from tests.batch.conftest import local, read_output, write_prompts


def _run(server: OllamaServer, inp: Path | str, out: Path, **kw: Any) -> dict[str, Any]:
    params = BatchParams(
        input=str(inp),
        output=str(out),
        target=server.base_url,
        in_flight=4,
        shard_size=25,
        request_timeout_seconds=5,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.1,
        **kw,
    )
    return asyncio.run(batch_inference(params))


def test_bad_input_becomes_error_records_and_every_other_line_succeeds(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    server = sim_server()
    good = [json.dumps({"id": f"g{i}", "prompt": f"q{i}"}).encode() for i in range(6)]
    lines = [
        good[0],
        b'{"id": "m1", "prompt": "broken',  # 2: malformed JSON
        good[1],
        b'{"id": "np", "system": "no prompt here"}',  # 4: missing prompt
        good[2],
        b'{"prompt": "caf\xe9"}',  # 6: invalid UTF-8
        good[3],
        b'{"prompt": "' + b"x" * 5000 + b'"}',  # 8: oversized
        good[4],
        b"",  # 10: blank, skipped
        json.dumps(
            {"custom_id": "oai", "body": {"messages": [{"role": "user", "content": "hi"}]}}
        ).encode(),
        good[5],
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "in" / "q.txt").write_text("first prompt\nsecond prompt\n")
    manifest = _run(server, tmp_path / "in", tmp_path / "out", max_line_bytes=1024)

    results, errors = read_output(local(tmp_path / "out"))
    assert sorted(r["id"] for r in results) == sorted(
        [f"g{i}" for i in range(6)] + ["oai", "q.txt:1", "q.txt:2"]
    )
    assert all(r["response"] and r["eval_count"] > 0 and r["model"] for r in results)
    by_line = {e["line"]: e for e in errors}
    assert sorted(by_line) == [2, 4, 6, 8]
    assert "malformed JSON" in by_line[2]["error"] and by_line[2]["id"] == "p.jsonl:2"
    assert "missing prompt" in by_line[4]["error"] and by_line[4]["id"] == "np"
    assert "invalid UTF-8" in by_line[6]["error"]
    assert "oversized" in by_line[8]["error"]
    assert all(e["file"].endswith("p.jsonl") and e["kind"] == "input" for e in errors)
    assert manifest["counts"] == {"total": 13, "succeeded": 9, "failed": 4, "skipped": 0}
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["counts"] == manifest["counts"] and saved["model"] == "gemma2:9b"
    assert saved["tokens"]["eval"] == sum(r["eval_count"] for r in results)

    # A rerun skips everything and sends nothing.
    again = _run(server, tmp_path / "in", tmp_path / "out", max_line_bytes=1024)
    assert again["counts"] == {"total": 13, "succeeded": 9, "failed": 4, "skipped": 13}
    assert again["this_run"]["sent"] == 0
    assert read_output(local(tmp_path / "out")) == (results, errors)

    table = asyncio.run(Artifact.aget(SUMMARY_KEY))
    assert table is not None and "tokens out" in str(table.data) and "L4" in str(table.data)


def test_retry_errors_resends_failed_ids_and_keeps_each_id_once(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    ids = write_prompts(tmp_path / "in" / "p.jsonl", 60)
    broken = sim_server(OLLAMA_SIM_FAULT_500="0.5", OLLAMA_SIM_SEED="3")
    first = _run(broken, tmp_path / "in", tmp_path / "out", max_retries=0)
    assert first["counts"]["failed"] > 5
    healthy = sim_server()
    skip = _run(healthy, tmp_path / "in", tmp_path / "out")
    assert skip["this_run"]["sent"] == 0 and skip["counts"]["failed"] == first["counts"]["failed"]
    retry = _run(healthy, tmp_path / "in", tmp_path / "out", retry_errors=True)
    assert retry["counts"] == {
        "total": 60,
        "succeeded": 60,
        "failed": 0,
        "skipped": 60 - first["counts"]["failed"],
    }
    results, errors = read_output(local(tmp_path / "out"))
    assert errors == [] and sorted(r["id"] for r in results) == ids


def test_openai_mode(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    ids = write_prompts(tmp_path / "in.jsonl", 10)
    _run(sim_server(), tmp_path / "in.jsonl", tmp_path / "out", api="openai")
    results, errors = read_output(local(tmp_path / "out"))
    assert errors == [] and sorted(r["id"] for r in results) == ids
    assert all(r["response"] and r["eval_count"] > 0 for r in results)


def test_parameters_are_validated() -> None:
    with pytest.raises(ValidationError, match="Cloud Run service name"):
        BatchParams(input="a", output="b", target="Not A Service!")
    with pytest.raises(ValidationError, match="gs://bucket/path or a local path"):
        BatchParams(input="s3://x/y", output="b")
    with pytest.raises(ValidationError):
        BatchParams(input="a", output="b", shard_size=0)
