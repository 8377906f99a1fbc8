"""A local Google Cloud for the official client libraries (`python -m emulator.gcp`).

`start_gcp_emulator` / `running_gcp_emulator` run the CLI as a subprocess for tests and tooling.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.gcp.config import config_argv
from emulator.gcp.storage import die_with_parent
from tasks.env_files import parse_env_file
from tasks.processes import stop_process

read_env_file = parse_env_file


@dataclass
class GcpEmulatorProcess:
    """A running `python -m emulator.gcp`."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    env_file: Path
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.env["OLLAMA_CLOUDRUN_API_ENDPOINT"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (clean shutdown: fake-gcs-server and service backends stop), then SIGKILL."""
        stop_process(self.process, grace=timeout)


def start_gcp_emulator(
    state_dir: Path,
    port: int = 0,
    *,
    env_file: Path | None = None,
    sim_env: dict[str, str] | None = None,
    timeout: float = 120.0,
    **config: Any,
) -> GcpEmulatorProcess:
    """Start the emulator with its state in `state_dir`; returns once the env file is written.

    `config` takes EmulatorConfig field names (project, ollama_engine, gpu_quota, build_seconds...):
    each becomes its command-line flag (`emulator.gcp.config.config_argv`).
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    env_path = (env_file or state_dir / "emulator.env").resolve()
    env_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "emulator.gcp", "--state-dir", str(state_dir)]
    cmd += ["--port", str(port), "--env-file", str(env_path)]
    cmd += config_argv({**config, "sim_env": sim_env or {}})
    log_file = state_dir / "emulator.log"
    root = Path(__file__).resolve().parents[2]
    paths = [str(root), os.environ.get("PYTHONPATH", "")]
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            preexec_fn=die_with_parent,
        )
    emu = GcpEmulatorProcess(process, state_dir, env_path, log_file)
    deadline = time.monotonic() + timeout
    while not env_path.exists():
        if process.poll() is not None:
            raise RuntimeError(
                f"emulator.gcp exited with {process.returncode}: {log_file.read_text()[-2000:]}"
            )
        if time.monotonic() > deadline:
            emu.stop()
            raise TimeoutError(f"emulator.gcp did not start in {timeout}s; log: {log_file}")
        time.sleep(0.05)
    emu.env = read_env_file(env_path)
    return emu


@contextmanager
def running_gcp_emulator(
    state_dir: Path, port: int = 0, **config: Any
) -> Iterator[GcpEmulatorProcess]:
    emu = start_gcp_emulator(state_dir, port, **config)
    try:
        yield emu
    finally:
        emu.stop()


__all__ = ["GcpEmulatorProcess", "read_env_file", "running_gcp_emulator", "start_gcp_emulator"]
