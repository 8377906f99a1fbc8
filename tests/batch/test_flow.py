"""The flow end to end on local files against the sim engine (one Prefect test server)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.artifacts import Artifact
from pydantic import ValidationError

from emulator.ollama.launcher import OllamaServer
from flows.batch import SUMMARY_KEY, BatchParams, batch_inference
from tasks.batch.manifest import BatchManifest
from tasks.batch.outputs import iter_final_records
from tasks.errors import OutputLocationError
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
    first = _run(broken, tmp_path / "in", tmp_path / "out", max_retries=0, max_failed_fraction=1)
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


def _requests_served(server: OllamaServer) -> int:
    """Generation requests the sim drew a fault outcome for: all of them, once faults are on."""
    return int(httpx.get(server.base_url + "/_emulator/state", timeout=10).json()["faults_drawn"])


def test_an_unwritable_output_fails_before_any_request_reaches_the_server(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    server = sim_server(OLLAMA_SIM_FAULT_503="1e-12")  # faults on: every request is counted
    write_prompts(tmp_path / "in" / "p.jsonl", 5)
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(OutputLocationError, match="cannot create objects under the output"):
        _run(server, tmp_path / "in", tmp_path / "a-file" / "out")
    assert _requests_served(server) == 0
    assert not (tmp_path / "a-file" / "out").exists()
    # The counter does count: the same batch to a writable output sends its 5 prompts.
    _run(server, tmp_path / "in", tmp_path / "out")
    assert _requests_served(server) == 5
    assert os.listdir(tmp_path / "out") == ["manifest.json", "results"]  # no probe left behind


@pytest.mark.parametrize(
    ("inp", "out", "relation"),
    [
        ("in", "in", "same location"),
        ("in/p.jsonl", "in/p.jsonl", "same location"),
        ("in", "in/out", "output is inside the input"),
        ("in/*.jsonl", "in/results", "output is inside the input"),
        ("in/p.jsonl", "in", "output contains the input"),
    ],
)
def test_an_output_overlapping_the_input_is_rejected_naming_both(
    prefect_api: str, tmp_path: Path, inp: str, out: str, relation: str
) -> None:
    write_prompts(tmp_path / "in" / "p.jsonl", 3)
    with pytest.raises(OutputLocationError, match=relation) as caught:
        _run_url("http://127.0.0.1:9", tmp_path / inp, tmp_path / out)
    assert str(tmp_path / inp) in str(caught.value) and str(tmp_path / out) in str(caught.value)


def _run_url(url: str, inp: Path, out: Path) -> dict[str, Any]:
    params = BatchParams(input=str(inp), output=str(out), target=url, in_flight=1)
    return asyncio.run(batch_inference(params))


def test_a_fixed_line_retires_its_old_error_record(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    server = sim_server()
    source = tmp_path / "in" / "p.jsonl"
    source.parent.mkdir()
    good = [json.dumps({"id": f"g{i}", "prompt": f"q{i}"}) for i in range(3)]
    source.write_text("\n".join([good[0], '{"id": "m", "prompt": "broken', good[1], "no"]) + "\n")
    first = _run(server, source.parent, tmp_path / "out")
    assert first["counts"] == {"total": 4, "succeeded": 2, "failed": 2, "skipped": 0}
    assert [e["id"] for e in read_output(local(tmp_path / "out"))[1]] == ["p.jsonl:2", "p.jsonl:4"]

    # Line 2 is fixed and now carries its own id; line 4 is still bad, so the old error shard
    # stays, and the old record of line 2 is retired by the rule (not by the shard's deletion).
    fixed = json.dumps({"id": "fixed", "prompt": "now whole"})
    source.write_text("\n".join([good[0], fixed, good[1], "no"]) + "\n")
    second = _run(server, source.parent, tmp_path / "out")
    assert second["counts"] == {"total": 4, "succeeded": 3, "failed": 1, "skipped": 3}
    final = {r["id"]: r for r in iter_final_records(local(tmp_path / "out"))}
    assert sorted(final) == ["fixed", "g0", "g1", "p.jsonl:4"]  # one record per input line
    assert "error" not in final["fixed"] and "malformed JSON" in final["p.jsonl:4"]["error"]

    # Line 4 fixed too: every old error record is superseded, so its shard is deleted.
    source.write_text("\n".join([good[0], fixed, good[1], good[2]]) + "\n")
    _run(server, source.parent, tmp_path / "out")
    results, errors = read_output(local(tmp_path / "out"))
    assert errors == [] and sorted(r["id"] for r in results) == ["fixed", "g0", "g1", "g2"]
    saved = BatchManifest.model_validate_json((tmp_path / "out" / "manifest.json").read_text())
    assert saved.counts.total == 4 and saved.shards.retired_error_shards and saved.uri is None


def test_openai_lines_go_to_the_endpoint_their_url_names(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    lines = [
        {"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions", "body": chat},
        {"custom_id": "text", "method": "POST", "url": "/v1/completions", "body": {"prompt": "q"}},
        {"custom_id": "get", "method": "GET", "url": "/v1/chat/completions", "body": chat},
        {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
        {"custom_id": "nope", "method": "GET", "url": "/v1/does/not/exist", "body": chat},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for api in ("ollama", "openai"):
        manifest = _run(sim_server(), tmp_path / "in.jsonl", tmp_path / api, api=api)
        assert manifest["counts"]["succeeded"] == 2, api
        results, errors = read_output(local(tmp_path / api))
        assert sorted(r["id"] for r in results) == ["chat", "text"]
        reasons = {e["id"]: e["error"] for e in errors if e["kind"] == "input"}
        assert "GET /v1/chat/completions" in reasons["get"]
        assert "POST /v1/embeddings" in reasons["emb"]
        assert "GET /v1/does/not/exist" in reasons["nope"]
