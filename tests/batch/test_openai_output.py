"""OpenAI batch lines in, OpenAI's batch output format out; no request field dropped silently."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from emulator.ollama.launcher import OllamaServer
from flows.batch import BatchParams, batch_inference
from tasks.batch.inputs import InputFile, parse_line
from tasks.batch.records import InputProblem, PromptRequest
from tasks.batch.results import write_results
from tasks.batch.stores import LocalStore
from tests.batch.conftest import local, read_output

ROOT = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


def _line(id_: str, url: str = CHAT, **body: Any) -> str:
    if url == CHAT:
        body.setdefault("messages", [{"role": "user", "content": f"Say hi, {id_}"}])
    else:
        body.setdefault("prompt", f"Say hi, {id_}")
    return json.dumps({"custom_id": id_, "method": "POST", "url": url, "body": body})


def _parse(tmp_path: Path, line: str) -> PromptRequest | InputProblem | None:
    raw = line.encode()
    return parse_line(
        InputFile(LocalStore(tmp_path), "a.jsonl", 0, "jsonl"), 1, raw, len(raw), 4096
    )


def test_every_body_field_is_sent_or_refused_by_name(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    problem = _parse(tmp_path, _line("t", tools=tools, user="me"))
    assert isinstance(problem, InputProblem) and problem.id == "t"
    assert "fields 'tools', 'user' cannot be sent" in problem.reason
    sent = _parse(
        tmp_path,
        _line(
            "ok",
            n=1,
            stream=False,
            seed=3,
            stop=["x"],
            max_tokens=5,
            temperature=0.1,
            response_format={"type": "json_object"},
        ),
    )
    assert isinstance(sent, PromptRequest) and sent.openai and sent.format == "json"
    assert sent.options == {"num_predict": 5, "temperature": 0.1, "seed": 3, "stop": ["x"]}
    many = _parse(tmp_path, _line("n", n=2))
    assert isinstance(many, InputProblem) and "'n'" in many.reason


def _write_input(path: Path, ids: list[str]) -> None:
    lines = [_line(i, "/v1/completions" if i.endswith("7") else CHAT) for i in ids]
    lines.append(_line("with-tools", tools=[{"type": "function", "function": {"name": "f"}}]))
    path.write_text("\n".join(lines) + "\n")


def _cli(*args: str, api: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flows", *args],
        env={**os.environ, "PREFECT_API_URL": api},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_after_a_run_a_killed_run_and_a_resumed_run_one_openai_line_per_id(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    server = sim_server(parallel=4, OLLAMA_SIM_SERVICE_SECONDS="0.02")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out"
    ids = [f"r{i:04d}" for i in range(1200)]
    _write_input(inp, ids[:100])
    common = {"input": str(inp), "output": str(out), "target": server.base_url, "api": "openai"}
    asyncio.run(batch_inference(BatchParams(**common, in_flight=4, shard_size=50)))

    _write_input(inp, ids)  # more prompts arrive; the next run is killed half-way
    options = ["--input", str(inp), "--output", str(out), "--target", server.base_url]
    options += ["--api", "openai", "--in-flight", "4", "--shard-size", "50", "--lease-seconds", "2"]
    killed = _cli("batch", *options, api=prefect_api)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(read_output(local(out))[0]) < 400:
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    lease = json.loads((out / "lease.json").read_text())  # the killed run never released it
    while dt.datetime.now(dt.UTC) <= dt.datetime.fromisoformat(lease["expires_at"]):
        time.sleep(0.2)  # then it has expired, and the resumed run (in this process) takes it over
    resumed = asyncio.run(batch_inference(BatchParams(**common, in_flight=4, shard_size=50)))
    assert resumed["counts"]["skipped"] >= 400  # what the killed run wrote stays

    done = _cli(
        "results",
        str(out),
        "--format",
        "openai",
        "--to",
        str(tmp_path / "o.jsonl"),
        api=prefect_api,
    )
    stdout, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr[-3000:]
    results = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (tmp_path / "o-errors.jsonl").read_text().splitlines()]
    assert Counter(r["custom_id"] for r in results + errors) == Counter([*ids, "with-tools"])
    for line in results:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        model = Completion if line["custom_id"].endswith("7") else ChatCompletion
        parsed = model.model_validate(body)
        assert parsed.usage is not None and parsed.usage.completion_tokens > 0
    [tools_error] = errors
    assert tools_error["response"] is None and tools_error["error"]["code"] == "invalid_request"
    assert "'tools'" in tools_error["error"]["message"]
    counts = json.loads(stdout[stdout.index("{") :])
    assert counts["records"] == 1201 and counts["input_errors"] == 1
    # auto: OpenAI batch lines in → OpenAI's format out, by default.
    assert write_results(str(out), str(tmp_path / "auto.jsonl")).format == "openai"


def test_request_fields_reach_the_server_or_become_input_errors_naming_them(
    prefect_api: str, sim_server: Callable[..., OllamaServer], tmp_path: Path
) -> None:
    server = sim_server()
    sent = {"response_format": {"type": "json_object"}, "seed": 7, "stop": ["\n\n"]}
    sent |= {"max_tokens": 20, "temperature": 0.2, "top_p": 0.9}
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    lines = [_line("fmt", **sent), _line("tools", tools=tools)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    params = BatchParams(
        input=str(tmp_path / "in.jsonl"),
        output=str(tmp_path / "out"),
        target=server.base_url,
        api="openai",
        max_failed_fraction=1,
    )
    asyncio.run(batch_inference(params))
    log = httpx.get(server.base_url + "/_emulator/requests", timeout=10).json()["requests"]
    [request] = [r for r in log if r["path"] == CHAT]  # the tools line was never sent
    body = request["body"]
    assert body["response_format"] == {"type": "json_object"}
    assert (body["seed"], body["stop"], body["max_tokens"]) == (7, ["\n\n"], 20)
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)
    results, errors = read_output(local(tmp_path / "out"))
    assert [r["id"] for r in results] == ["fmt"]
    [error] = errors
    assert error["id"] == "tools" and error["kind"] == "input" and "'tools'" in error["error"]
