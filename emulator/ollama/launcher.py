"""Start and stop ``python -m emulator.ollama`` in a child process (for tests and other emulators).

The child binds the port itself (port 0 = any free port, no race) and writes it to a ready file;
we then wait until ``GET /`` answers. Stopping is SIGTERM, then SIGKILL. The child also exits on
its own when this process dies (it watches its parent), so no server is left orphaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from tasks.processes import stop_process


@dataclass(frozen=True)
class OllamaServer:
    base_url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path | None = None


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def start_ollama_server(
    *,
    engine: Literal["sim", "llama"],
    models: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 0,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    ready_timeout: float = 120.0,
) -> OllamaServer:
    """Start a server and wait until it answers; raise RuntimeError with its log otherwise."""
    if engine not in ("sim", "llama"):
        raise ValueError(f"engine must be 'sim' or 'llama', got {engine!r}")
    workdir = Path(tempfile.mkdtemp(prefix="ollama-emulator-"))
    ready_file = workdir / "ready.json"
    if log_path is None:
        log_path = workdir / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "emulator.ollama", "--engine", engine]
    args += ["--host", host, "--port", str(port), "--ready-file", str(ready_file)]
    for spec in models:
        args += ["--model", spec]
    args += list(extra_args)
    child_env = {**os.environ, **(env or {})}
    child_env["OLLAMA_EMULATOR_PARENT_PID"] = str(os.getpid())
    # The package root must be importable even when the caller runs from elsewhere.
    root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, child_env.get("PYTHONPATH", "")) if p
    )
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env
        )
    deadline = time.monotonic() + ready_timeout
    try:
        info = _wait_ready_file(process, ready_file, deadline, log_path)
        server = OllamaServer(str(info["base_url"]), int(str(info["port"])), process, log_path)
        _wait_http(server, deadline)
    except BaseException:
        _terminate(process, 5.0)
        raise
    return server


def _wait_ready_file(
    process: subprocess.Popen[bytes], ready_file: Path, deadline: float, log_path: Path
) -> dict[str, object]:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"ollama emulator exited with {process.returncode} before it was ready; "
                f"log {log_path}:\n{_tail(log_path)}"
            )
        if ready_file.exists():
            info: dict[str, object] = json.loads(ready_file.read_text())
            return info
        time.sleep(0.02)
    raise RuntimeError(f"ollama emulator not ready in time; log {log_path}:\n{_tail(log_path)}")


def _wait_http(server: OllamaServer, deadline: float) -> None:
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"ollama emulator exited with {server.process.returncode}; "
                    f"log {server.log_path}:\n{_tail(server.log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(server.base_url + "/").status_code == 200:
                    return
            time.sleep(0.05)
    raise RuntimeError(f"ollama emulator at {server.base_url} did not answer GET / in time")


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    stop_process(process, grace=timeout)


def stop_ollama_server(server: OllamaServer, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
    _terminate(server.process, timeout)


@contextmanager
def running_ollama_server(
    *,
    engine: Literal["sim", "llama"],
    models: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 0,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    ready_timeout: float = 120.0,
) -> Iterator[OllamaServer]:
    server = start_ollama_server(
        engine=engine,
        models=models,
        host=host,
        port=port,
        env=env,
        extra_args=extra_args,
        log_path=log_path,
        ready_timeout=ready_timeout,
    )
    try:
        yield server
    finally:
        stop_ollama_server(server)
