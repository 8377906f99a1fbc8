"""Benchmark of the Ollama emulator (not a test): ``.venv/bin/python tests/bench/bench_ollama.py``.

1. Sim engine overhead per request on loopback, against a baseline measured in the same run: a
   bare Starlette app under the same uvicorn settings answering a constant JSON body (and a
   constant NDJSON stream of the same number of lines). Same lean keep-alive client for both.
2. llama engine tokens/s (prompt eval and generation) on smollm2:135m and gemma3:270m through
   the server, against llama-cpp-python driven directly in this process (same threads, prompt).

Prints figures and ratios; asserts nothing. Takes about one to two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from emulator.ollama.launcher import running_ollama_server  # noqa: E402

SIM_MODEL = "gemma2:9b"
TOKENS = 24  # sim answer length (tokens = NDJSON lines - 1 when streamed)
PROMPT = (
    "You are a careful assistant. Explain, step by step and in plain words, why the sky "
    "looks blue during the day and red at sunset, and what Rayleigh scattering has to do "
    "with it. Mention the role of wavelength, the thickness of the atmosphere along the "
    "line of sight, and why clouds look white."
)


# ---------------------------------------------------------------------------------------------
# Baseline server: a bare Starlette app (run as a child process with --baseline-server).


def serve_baseline(port_file: Path) -> None:
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    body = json.dumps(
        {
            "model": SIM_MODEL,
            "created_at": "2026-01-01T00:00:00.000000000Z",
            "response": " ".join(["word"] * TOKENS),
            "done": True,
            "done_reason": "stop",
            "context": list(range(40)),
            "total_duration": 1,
            "load_duration": 1,
            "prompt_eval_count": 1,
            "prompt_eval_duration": 1,
            "eval_count": TOKENS,
            "eval_duration": 1,
        },
        separators=(",", ":"),
    ).encode()
    line = (
        b'{"model":"gemma2:9b","created_at":"2026-01-01T00:00:00.123456789Z",'
        b'"response":" word","done":false}\n'
    )

    async def constant(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json; charset=utf-8")

    async def stream(request: Request) -> Response:
        await request.body()

        async def lines() -> Any:
            for _ in range(TOKENS):
                yield line
            yield body + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    app = Starlette(routes=[Route("/json", constant, methods=["POST"]),
                            Route("/stream", stream, methods=["POST"])])  # fmt: skip
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port_file.write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


# ---------------------------------------------------------------------------------------------
# A lean HTTP/1.1 keep-alive client, so the client's own cost does not hide the server's.


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes
) -> bytes:
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode())
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        return await reader.readuntil(b"\r\n0\r\n\r\n")
    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


async def _load(port: int, path: str, body: bytes, requests: int, connections: int) -> float:
    """Seconds to run `requests` requests over `connections` keep-alive connections."""

    async def worker(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            await _request(reader, writer, path, body)
        writer.close()

    share = [requests // connections] * connections
    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in share))
    return time.perf_counter() - start


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): robust to other load on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _best_pair(
    targets: list[tuple[int, int, str]],
    body: bytes,
    requests: int,
    connections: int,
    rounds: int = 5,
) -> list[tuple[float, float]]:
    """(wall seconds, server CPU seconds) per request for each (pid, port, path), best of
    `rounds`. Runs are interleaved so that load from other processes hits both sides alike."""
    for _, port, path in targets:
        asyncio.run(_load(port, path, body, max(50, requests // 10), connections))  # warm-up
    wall = [float("inf")] * len(targets)
    cpu = [float("inf")] * len(targets)
    for _ in range(rounds):
        for i, (pid, port, path) in enumerate(targets):
            before = _cpu_seconds(pid)
            wall[i] = min(wall[i], asyncio.run(_load(port, path, body, requests, connections)))
            cpu[i] = min(cpu[i], _cpu_seconds(pid) - before)
    return [(w / requests, c / requests) for w, c in zip(wall, cpu, strict=True)]


def bench_sim(requests: int, connections: int) -> None:
    import subprocess
    import tempfile

    port_file = Path(tempfile.mkdtemp()) / "port"
    baseline = subprocess.Popen(
        [sys.executable, __file__, "--baseline-server", str(port_file)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        base_port = int(port_file.read_text())
        time.sleep(0.5)
        args = ["--sim-response-tokens", str(TOKENS)]
        env = {"OLLAMA_NUM_PARALLEL": str(connections)}  # one slot per connection: no queueing
        with running_ollama_server(
            engine="sim", models=[SIM_MODEL], extra_args=args, env=env
        ) as sim:
            for stream in (False, True):
                request = {"model": SIM_MODEL, "prompt": "Why is the sky blue?", "stream": stream}
                body = json.dumps(request).encode()
                path = "/stream" if stream else "/json"
                (base, base_cpu), (ours, ours_cpu) = _best_pair(
                    [(baseline.pid, base_port, path), (sim.process.pid, sim.port, "/api/generate")],
                    body,
                    requests,
                    connections,
                )
                label = f"streamed, {TOKENS + 1} lines" if stream else "stream:false"
                print(
                    f"sim /api/generate ({label}): wall {ours * 1e6:5.0f} µs/request "
                    f"({1 / ours:4.0f} req/s) vs baseline {base * 1e6:5.0f} µs ({1 / base:4.0f} "
                    f"req/s), ratio {ours / base:.2f} | server CPU {ours_cpu * 1e6:5.0f} µs/request"
                    f" vs baseline {base_cpu * 1e6:5.0f} µs, ratio {ours_cpu / base_cpu:.2f}, "
                    f"overhead {(ours_cpu - base_cpu) * 1e6:.0f} µs CPU/request"
                )
    finally:
        baseline.terminate()
        baseline.wait(10)


# ---------------------------------------------------------------------------------------------
# llama: tokens/s through the server vs llama-cpp-python directly.


def _direct_llama(standin: str, num_predict: int, threads: int) -> tuple[float, float]:
    """Prompt and generation tokens/s with llama-cpp-python driven directly (same settings)."""
    import llama_cpp

    from emulator.ollama.catalog import STANDINS

    path = STANDINS[standin].locate()
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
        verbose=False,
    )  # fmt: skip
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    start = time.perf_counter()
    llm.eval(tokens)
    prompt_s = time.perf_counter() - start
    start = time.perf_counter()
    count = 0
    for _ in llm.generate(tokens, temp=0.0):  # the prompt is cached: samples at once
        count += 1
        if count >= num_predict:
            break
    gen_s = time.perf_counter() - start
    llm.close()
    return len(tokens) / prompt_s, count / gen_s


def bench_llama(num_predict: int, runs: int) -> None:
    import httpx

    threads = max(1, min(os.cpu_count() or 1, (os.cpu_count() or 1) - 1))
    models = ["smollm2:135m", "gemma3:270m"]
    with (
        running_ollama_server(engine="llama", models=models, ready_timeout=300) as server,
        httpx.Client(base_url=server.base_url, timeout=600) as http,
    ):
        for model in models:
            options = {"num_predict": num_predict, "temperature": 0, "seed": 1}
            request = {"model": model, "prompt": PROMPT, "stream": False, "raw": True}
            http.post("/api/generate", json={**request, "options": {"num_predict": 1}})
            prompt_tps, gen_tps = [], []
            for i in range(runs):
                # A different first word each time defeats the prompt cache.
                body = {**request, "prompt": f"{i}. {PROMPT}", "options": options}
                result = http.post("/api/generate", json=body).json()
                prompt_tps.append(
                    result["prompt_eval_count"] / result["prompt_eval_duration"] * 1e9
                )
                gen_tps.append(result["eval_count"] / result["eval_duration"] * 1e9)
            direct_prompt, direct_gen = _direct_llama(model, num_predict, threads)
            p, g = statistics.median(prompt_tps), statistics.median(gen_tps)
            print(
                f"llama {model:<13} prompt eval {p:6.1f} tok/s (direct llama-cpp "
                f"{direct_prompt:6.1f}, ratio {p / direct_prompt:.2f}) | generation "
                f"{g:5.1f} tok/s (direct {direct_gen:5.1f}, ratio {g / direct_gen:.2f}) | "
                f"{threads} thread(s), load avg {os.getloadavg()[0]:.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline-server", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--num-predict", type=int, default=32)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--skip-llama", action="store_true")
    args = parser.parse_args()
    if args.baseline_server is not None:
        serve_baseline(args.baseline_server)
        return
    print(f"machine: {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")
    bench_sim(args.requests, args.connections)
    if not args.skip_llama:
        bench_llama(args.num_predict, args.runs)


if __name__ == "__main__":
    main()
