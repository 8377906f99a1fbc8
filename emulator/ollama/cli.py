"""``python -m emulator.ollama``: parse flags and environment, then serve with uvicorn.

argparse rather than typer: it starts faster, and tests start this server many times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from emulator.ollama.config import (
    SIM_ENV,
    FaultRates,
    ServerConfig,
    models_from_env,
    parse_token_range,
    server_env_settings,
    sim_config_from_env,
)

log = logging.getLogger("emulator.ollama")

DEFAULT_MODELS = {"llama": ["smollm2:135m"], "sim": ["gemma2:9b"]}


def _epilog() -> str:
    lines = [
        "Ollama's environment variables (as Ollama reads them):",
        "  OLLAMA_HOST             default bind address for --host/--port (127.0.0.1:11434)",
        "  OLLAMA_NUM_PARALLEL     slots per loaded model (default 1)",
        "  OLLAMA_MAX_QUEUE        requests that may wait for a model load (default 512)",
        "  OLLAMA_KEEP_ALIVE       idle time before unload: Go duration or seconds, <0 = forever"
        " (default 5m)",
        "  OLLAMA_MAX_LOADED_MODELS  models loaded at once (default 3)",
        "  OLLAMA_CONTEXT_LENGTH   default num_ctx (default 4096)",
        "  OLLAMA_EMULATOR_MODELS  comma-separated model SPECs (used when no --model is given)",
        "",
        "Sim engine (flags --sim-* override these):",
    ]
    lines += [f"  {name:<28}{text}" for name, text in SIM_ENV.items()]
    lines += [
        "",
        "Model SPEC: NAME or NAME=STANDIN. llama stand-ins: smollm2:135m (SmolLM2-135M-Instruct),",
        "gemma3:270m (Gemma 3 270M base); e.g. --model gemma2:9b=smollm2:135m. The sim engine",
        "serves any NAME it is given. Control routes for tests: POST /_emulator/faults",
        '{"script": ["reset","none",...], "at_piece": 1}, POST /_emulator/reset {"seed": N},',
        "GET /_emulator/state.",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m emulator.ollama",
        description="An Ollama-compatible HTTP server with a real small model (llama) or a "
        "deterministic simulator (sim).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engine", choices=["llama", "sim"], required=True)
    p.add_argument("--host", default=None, help="bind address (default from OLLAMA_HOST)")
    p.add_argument("--port", type=int, default=None, help="port, 0 = any free port")
    p.add_argument("--model", action="append", default=[], metavar="SPEC", help="repeatable")
    p.add_argument("--preload", action="store_true", help="load every model before serving")
    p.add_argument("--num-threads", type=int, default=0, help="llama threads per slot")
    p.add_argument("--ready-file", type=Path, default=None, help="write {port, base_url} here")
    p.add_argument("--log-level", default="INFO", help="server log level (default INFO)")
    sim = p.add_argument_group("sim engine")
    sim.add_argument("--sim-seed", type=int)
    sim.add_argument("--sim-load-seconds", type=float)
    sim.add_argument("--sim-prompt-tps", type=float)
    sim.add_argument("--sim-tps", type=float)
    sim.add_argument("--sim-service-seconds", type=float)
    sim.add_argument("--sim-response-tokens", metavar="N|MIN-MAX")
    sim.add_argument("--sim-fault-503", type=float, metavar="RATE")
    sim.add_argument("--sim-fault-500", type=float, metavar="RATE")
    sim.add_argument("--sim-fault-reset", type=float, metavar="RATE")
    sim.add_argument("--sim-fault-midstream", type=float, metavar="RATE")
    sim.add_argument("--sim-fault-stall", type=float, metavar="RATE")
    sim.add_argument("--sim-stall-seconds", type=float)
    return p


def _host_port(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, int]:
    host, port = "127.0.0.1", 11434
    raw = env.get("OLLAMA_HOST", "").strip()
    if raw:
        raw = raw.split("://", 1)[-1].split("/", 1)[0]
        name, sep, num = raw.rpartition(":")
        if sep and num.isdigit():
            host, port = name or host, int(num)
        else:
            host = raw
    return (args.host or host), (port if args.port is None else args.port)


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> ServerConfig:
    sim = sim_config_from_env(env)
    overrides: dict[str, object] = {}
    for flag, field in (
        ("sim_seed", "seed"),
        ("sim_load_seconds", "load_seconds"),
        ("sim_prompt_tps", "prompt_tps"),
        ("sim_tps", "tps"),
        ("sim_service_seconds", "service_seconds"),
        ("sim_stall_seconds", "stall_seconds"),
    ):
        if getattr(args, flag) is not None:
            overrides[field] = getattr(args, flag)
    if args.sim_response_tokens is not None:
        overrides["min_tokens"], overrides["max_tokens"] = parse_token_range(
            args.sim_response_tokens
        )
    rates = sim.faults
    fault_flags = {
        "busy_503": args.sim_fault_503,
        "error_500": args.sim_fault_500,
        "reset": args.sim_fault_reset,
        "midstream": args.sim_fault_midstream,
        "stall": args.sim_fault_stall,
    }
    rates = replace(rates, **{k: v for k, v in fault_flags.items() if v is not None})
    sim = replace(sim, faults=FaultRates(**rates.__dict__), **overrides)  # type: ignore[arg-type]
    sim.validate()
    settings = server_env_settings(env)
    models = list(args.model) or models_from_env(env) or DEFAULT_MODELS[args.engine]
    return ServerConfig(
        engine=args.engine,
        models=tuple(models),
        num_threads=args.num_threads,
        preload=args.preload,
        sim=sim,
        **settings,  # type: ignore[arg-type]
    )


async def _warm_up(base_url: str) -> None:
    """One streamed response before we say we are ready: the first one pays ~100 ms of lazy
    imports (anyio), which would otherwise land in a test's or benchmark's first request.
    A pull of an unknown name streams without touching any state. (A raw socket: importing
    httpx here would cost more start-up time than the warm-up saves.)"""
    host, _, port = base_url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    body = b'{"model":"emulator-warm-up:none"}'
    writer.write(
        b"POST /api/pull HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    await reader.read()
    writer.close()


def _duration_text(seconds: float) -> str:
    return "forever" if math.isinf(seconds) else f"{seconds:g}s"


async def _serve(config: ServerConfig, host: str, port: int, ready_file: Path | None) -> None:
    import uvicorn

    from emulator.ollama.app import build_app
    from emulator.ollama.service import build_state

    state = build_state(config)
    for entry in state.catalog.entries():
        if entry.is_standin:
            log.warning("STAND-IN: %s", entry.describe())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then (with
    # proto 0 every keep-alive response waited ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    if config.preload:
        for entry in state.catalog.entries():
            runner = await state.scheduler.acquire(entry, None, None)
            state.scheduler.release(runner)
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(state),
            log_level="warning",
            access_log=False,
            lifespan="on",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=1,
        )
    )
    base_url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        await _warm_up(base_url)
        models = "; ".join(entry.describe() for entry in state.catalog.entries())
        print(
            f"ollama emulator listening on {base_url} (engine={config.engine}, "
            f"OLLAMA_NUM_PARALLEL={config.num_parallel}, OLLAMA_MAX_QUEUE={config.max_queue}, "
            f"OLLAMA_KEEP_ALIVE={_duration_text(config.keep_alive)}) models: {models}",
            flush=True,
        )
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"port": port, "base_url": base_url, "pid": os.getpid()}))
            tmp.replace(ready_file)

    async def watch_parent() -> None:
        parent = os.environ.get("OLLAMA_EMULATOR_PARENT_PID")
        if not parent:
            return
        while not server.should_exit:
            if os.getppid() != int(parent):
                log.warning("parent process %s is gone: shutting down", parent)
                server.should_exit = True
                return
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(announce()), asyncio.create_task(watch_parent())]
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in tasks:
            task.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # llama.cpp's OpenMP threads spin while waiting by default; on a shared machine that starves
    # everything else (the server's own event loop included).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = build_config(args, os.environ)
        host, port = _host_port(args, os.environ)
        asyncio.run(_serve(config, host, port, args.ready_file))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0
