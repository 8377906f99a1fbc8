"""The final answer set: ``iter_results``, ``write_results``, the ``results`` command and
``batch --collect``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulator.ollama.launcher import OllamaServer
from flows.batch import BatchParams, batch_inference
from tasks.batch.outputs import ShardWriter
from tasks.batch.results import iter_results, write_results
from tasks.batch.stores import LocalStore
from tests.batch.conftest import write_prompts

ROOT = Path(__file__).resolve().parents[2]


def _ok(id_: str, line: int, text: str = "ok") -> dict[str, Any]:
    return {"id": id_, "response": text, "file": "in.jsonl", "line": line}


def _err(id_: str, line: int, reason: str = "HTTP 500: boom") -> dict[str, Any]:
    return {
        "id": id_,
        "error": reason,
        "status": 500,
        "kind": "request",
        "file": "in",
        "line": line,
    }


def _output(tmp_path: Path) -> Path:
    """Three runs' shards: b failed then succeeded, c failed twice, d is a racing duplicate."""
    out = tmp_path / "out"
    store = LocalStore(out)
    ShardWriter(store, "20260101T000000Z-aaaa").write(1, [_ok("d", 4), _ok("a", 1)], [_err("b", 2)])
    ShardWriter(store, "20260102T000000Z-bbbb").write(1, [_ok("b", 2, "B")], [_err("c", 3, "old")])
    ShardWriter(store, "20260103T000000Z-cccc").write(
        1, [_ok("d", 4, "late")], [_err("c", 3, "new")]
    )
    ids = ["a", "b", "c", "d", "e"]  # e: never run
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": i, "prompt": i}) + "\n" for i in ids)
    )
    (out / "manifest.json").write_text(json.dumps({"input": str(tmp_path / "in.jsonl")}))
    return out


def test_one_record_per_id_by_the_reconciliation_rule(tmp_path: Path) -> None:
    out = _output(tmp_path)
    final = list(iter_results(str(out)))
    assert sorted(r["id"] for r in final) == ["a", "b", "c", "d"]
    by_id = {r["id"]: r for r in final}
    assert by_id["b"]["response"] == "B" and by_id["c"]["error"] == "new"
    assert by_id["d"]["response"] == "ok"  # the earliest shard's result wins
    assert [r["id"] for r in iter_results(str(out), order="input")] == ["a", "b", "c", "d"]
    lines = {line["custom_id"]: line for line in iter_results(str(out), format="openai")}
    assert sorted(lines) == ["a", "b", "c", "d"]
    assert lines["c"]["response"] is None and lines["c"]["error"]["code"] == "http_500"
    assert lines["b"]["response"]["body"]["choices"][0]["message"]["content"] == "B"


def test_write_results_counts_and_writes_one_line_per_id(tmp_path: Path) -> None:
    out = _output(tmp_path)
    counts = write_results(str(out), order="input")
    assert (counts.records, counts.succeeded, counts.failed, counts.input_errors) == (4, 3, 1, 0)
    lines = (out / "final" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c", "d"]
    assert counts.to == str(out / "final" / "results.jsonl")
    assert not [p for p in (out / "final").iterdir() if p.name.startswith(".")]  # no temp left
    # Collecting again (the final file now lives under the output) changes nothing.
    assert write_results(str(out), str(tmp_path / "again.jsonl")).records == 4


def test_the_results_command_and_batch_collect(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    ids = write_prompts(tmp_path / "in.jsonl", 30)
    params = BatchParams(
        input=str(tmp_path / "in.jsonl"),
        output=str(tmp_path / "out"),
        target=sim_server().base_url,
        in_flight=4,
        shard_size=7,
        collect=True,
    )
    asyncio.run(batch_inference(params))
    collected = (tmp_path / "out" / "final" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in collected) == ids

    to = tmp_path / "answers.jsonl"
    command = ["results", str(tmp_path / "out"), "--to", str(to), "--order", "input"]
    cli = subprocess.run(
        [sys.executable, "-m", "flows", *command],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    counts = json.loads(cli.stdout[cli.stdout.index("{") :])
    assert counts["records"] == 30 and counts["succeeded"] == 30 and counts["to"] == str(to)
    assert [json.loads(line)["id"] for line in to.read_text().splitlines()] == ids
