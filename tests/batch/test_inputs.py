"""Input discovery, line streaming and line parsing — no server needed."""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path

import pytest

from tasks.batch.inputs import InputFile, iter_lines, parse_line, resolve_inputs
from tasks.batch.ledger import IdLedger
from tasks.batch.plan import PlanStats, plan_shards
from tasks.batch.preflight import check_no_overlap, probe_output
from tasks.batch.records import InputProblem, PromptRequest
from tasks.batch.stores import LocalStore
from tasks.errors import OutputLocationError


def _file(tmp_path: Path, fmt: str = "jsonl") -> InputFile:
    return InputFile(LocalStore(tmp_path), f"a.{fmt}", 0, fmt)


def _parse(tmp_path: Path, raw: bytes | None, fmt: str = "jsonl", line: int = 7):
    return parse_line(_file(tmp_path, fmt), line, raw, len(raw or b"") + 1, 100)


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_iter_lines_numbers_and_sizes_across_chunk_boundaries(chunk: int) -> None:
    data = b"one\ntwo\n\nthree"
    lines = list(iter_lines(io.BytesIO(data), max_line_bytes=10, chunk_bytes=chunk))
    assert lines == [(1, b"one", 4), (2, b"two", 4), (3, b"", 1), (4, b"three", 5)]
    assert sum(size for *_, size in lines) == len(data)


@pytest.mark.parametrize("chunk", [2, 5, 4096])
def test_iter_lines_oversized_line_is_reported_and_the_next_line_survives(chunk: int) -> None:
    data = b"ok\n" + b"x" * 50 + b"\nafter\n" + b"y" * 30
    lines = list(iter_lines(io.BytesIO(data), max_line_bytes=10, chunk_bytes=chunk))
    assert lines == [(1, b"ok", 3), (2, None, 51), (3, b"after", 6), (4, None, 30)]


def test_parse_generate_chat_and_openai_batch_lines(tmp_path: Path) -> None:
    gen = _parse(
        tmp_path, b'{"id": 5, "prompt": "hi", "system": "be brief", "options": {"seed": 1}}'
    )
    assert isinstance(gen, PromptRequest)
    assert (gen.id, gen.prompt, gen.system, gen.options) == ("5", "hi", "be brief", {"seed": 1})
    chat = _parse(tmp_path, b'{"messages": [{"role": "user", "content": "hi"}], "format": "json"}')
    assert isinstance(chat, PromptRequest)
    assert chat.id == "a.jsonl:7" and chat.messages == ({"role": "user", "content": "hi"},)
    assert chat.format == "json"
    body = {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "q"}],
        "max_tokens": 9,
        "response_format": {"type": "json_object"},
    }
    line = json.dumps(
        {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )
    oai = _parse(tmp_path, line.encode())
    assert isinstance(oai, PromptRequest)
    assert (oai.id, oai.options, oai.format) == ("req-1", {"num_predict": 9}, "json")
    txt = _parse(tmp_path, b"plain prompt\r", fmt="txt", line=3)
    assert isinstance(txt, PromptRequest) and (txt.id, txt.prompt) == ("a.txt:3", "plain prompt")
    assert _parse(tmp_path, b"   ") is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"id": "x", "prompt": "unterminated', "malformed JSON"),
        (b'{"id": "x", "system": "s"}', "missing prompt"),
        (b'{"prompt": "a", "messages": []}', "both 'prompt' and 'messages'"),
        (b'{"prompt": ""}', "non-empty string"),
        (b'{"messages": [{"role": "user"}]}', "messages[0]"),
        (b'{"prompt": "a", "options": [1]}', "'options' must be an object"),
        (b'{"prompt": "a", "format": "xml"}', "'format'"),
        (b'{"id": true, "prompt": "a"}', "'id' must be"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"prompt": "caf\xe9"}', "invalid UTF-8 at byte 15"),
        (None, "oversized line"),
        (b'{"custom_id": "c", "body": "nope"}', "object 'body'"),
    ],
)
def test_bad_lines_become_problems_with_their_line(
    tmp_path: Path, raw: bytes | None, reason: str
) -> None:
    problem = _parse(tmp_path, raw, line=42)
    assert isinstance(problem, InputProblem)
    assert reason in problem.reason
    assert problem.line == 42 and problem.file.endswith("a.jsonl")


def test_a_bad_line_keeps_its_given_id(tmp_path: Path) -> None:
    problem = _parse(tmp_path, b'{"id": "keep", "system": "s"}')
    assert isinstance(problem, InputProblem) and problem.id == "keep"


def test_resolve_file_directory_glob_and_exclusions(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("a.jsonl", "b.txt", "sub/c.jsonl", "notes.md"):
        (tmp_path / "in" / name).write_text('{"prompt": "x"}\n')
    (tmp_path / "in" / "out").mkdir()
    (tmp_path / "in" / "out" / "old.jsonl").write_text("{}\n")
    single = resolve_inputs(str(tmp_path / "in" / "a.jsonl"))
    assert [(f.key, f.format) for f in single] == [("a.jsonl", "jsonl")]
    everything = resolve_inputs(str(tmp_path / "in"), exclude=str(tmp_path / "in" / "out"))
    assert sorted(f.key for f in everything) == ["a.jsonl", "b.txt", "sub/c.jsonl"]
    # Cloud Storage's matchGlob, also for a local directory: `*` stays in one level, `**` not.
    globbed = resolve_inputs(str(tmp_path / "in" / "*.jsonl"))
    assert sorted(f.key for f in globbed) == ["a.jsonl"]
    deep = resolve_inputs(str(tmp_path / "in" / "**.jsonl"))
    assert sorted(f.key for f in deep) == ["a.jsonl", "out/old.jsonl", "sub/c.jsonl"]
    nested = resolve_inputs(str(tmp_path / "in" / "**" / "c.jsonl"))
    assert [f.key for f in nested] == ["sub/c.jsonl"]
    either = resolve_inputs(str(tmp_path / "in" / "{a.jsonl,b.txt}"))
    assert sorted(f.key for f in either) == ["a.jsonl", "b.txt"]


def test_resolve_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(ValueError, match="no input files match"):
        resolve_inputs(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unsupported input file"):
        resolve_inputs(str(tmp_path / "notes.md"))
    with pytest.raises(ValueError, match="unsupported input"):
        resolve_inputs("s3://bucket/x.jsonl")


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_a_leading_byte_order_mark_is_not_part_of_the_first_line(tmp_path: Path, fmt: str) -> None:
    lines = ['{"id": "a", "prompt": "first"}', '{"id": "b", "prompt": "second"}']
    if fmt == "txt":
        lines = ["first", "second"]
    (tmp_path / f"p.{fmt}").write_bytes(codecs.BOM_UTF8 + "\n".join(lines).encode() + b"\n")
    stats = PlanStats()
    [shard] = plan_shards(
        resolve_inputs(str(tmp_path)),
        IdLedger(),
        stats,
        shard_size=10,
        retry_errors=False,
        max_line_bytes=1000,
    )
    assert shard.problems == []
    assert [r.prompt for r in shard.requests] == ["first", "second"]
    assert sum(r.size for r in shard.requests) == (tmp_path / f"p.{fmt}").stat().st_size


def _openai(tmp_path: Path, **line: object) -> PromptRequest | InputProblem | None:
    return _parse(tmp_path, json.dumps({"custom_id": "o", **line}).encode())


def test_openai_lines_name_their_endpoint(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "q"}]}
    named = _openai(tmp_path, method="POST", url="/v1/chat/completions", body=chat)
    text = _openai(tmp_path, method="POST", url="/v1/completions", body={"prompt": "q"})
    unnamed = _openai(tmp_path, body={"prompt": "q"})
    assert isinstance(named, PromptRequest) and named.endpoint == "chat"
    assert isinstance(text, PromptRequest) and (text.endpoint, text.prompt) == ("completions", "q")
    assert isinstance(unnamed, PromptRequest) and unnamed.endpoint is None


@pytest.mark.parametrize(
    ("method", "url", "body", "reason"),
    [
        ("GET", "/v1/chat/completions", None, "GET /v1/chat/completions"),
        ("POST", "/v1/embeddings", {"input": "x"}, "POST /v1/embeddings"),
        ("GET", "/v1/does/not/exist", None, "GET /v1/does/not/exist"),
        (None, "/v1/responses", None, "POST /v1/responses"),
        ("POST", None, None, "POST None"),
        ("POST", "/v1/chat/completions", {"prompt": "q"}, "takes 'messages', not 'prompt'"),
        ("POST", "/v1/completions", {"messages": []}, "takes 'prompt', not 'messages'"),
    ],
)
def test_openai_lines_for_other_endpoints_are_input_errors(
    tmp_path: Path, method: str | None, url: str | None, body: object, reason: str
) -> None:
    chat = {"messages": [{"role": "u", "content": "q"}]}
    line = {"method": method, "url": url, "body": body or chat}
    problem = _openai(tmp_path, **{k: v for k, v in line.items() if v is not None})
    assert isinstance(problem, InputProblem) and problem.id == "o"
    assert reason in problem.reason


@pytest.mark.parametrize(
    ("inp", "out"),
    [
        ("gs://b/p/", "gs://b/p"),
        ("gs://b/p/*.jsonl", "gs://b/p/out/"),
        ("gs://b/p/a.jsonl", "gs://b/"),
        ("gs://b/p/a.jsonl", "gs://b/p/a.jsonl/x"),
    ],
)
def test_overlapping_locations_are_rejected(inp: str, out: str) -> None:
    with pytest.raises(OutputLocationError, match="overlaps input"):
        check_no_overlap(inp, out)


@pytest.mark.parametrize(
    ("inp", "out"),
    [("gs://b/p/", "gs://b/p-out/"), ("gs://b/p/", "gs://c/p/"), ("gs://b/p/", "/tmp/p/")],
)
def test_separate_locations_pass(inp: str, out: str) -> None:
    check_no_overlap(inp, out)


def test_the_write_probe_leaves_nothing_and_names_an_unwritable_output(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    probe_output(store, "t1")
    assert list(store.list()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputLocationError, match=str(tmp_path / "file" / "out")):
        probe_output(LocalStore(tmp_path / "file" / "out"), "t2")
