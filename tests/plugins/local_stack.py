"""The local stack as a user starts it (`scripts/local_stack.py up`), for the tests that need it.

Starting it (emulator.gcp, Prefect's server, `prefect deploy --all`, two process workers) takes
40 s on an idle machine, so the browser test and the local-stack test (which ends it with Ctrl-C)
share one:

- `local_stack` (session): a `SharedStack`. `.running()` returns the running `up` (an `UpProcess`),
  starting one in a fresh state dir when there is none (the first test, or one after Ctrl-C);
  `.interrupt()` is Ctrl-C. At the end of the session a stack still running gets Ctrl-C, which
  must leave no process behind.
- The tests that use it run one after another, from the first one's place, so the stack is not
  left running (and using the shared cores) through the rest of the session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = "local_stack"


def processes_of(state_dir: Path) -> list[int]:
    """Pids whose environment or command line names this stack's state dir."""
    marker = str(state_dir).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "environ").read_bytes() + (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in blob:
            found.append(int(proc.name))
    return found


@dataclass
class UpProcess:
    """A running `scripts/local_stack.py up --port 0 --state-dir ...` and what it printed."""

    process: subprocess.Popen[str]
    state_dir: Path
    output: list[str] = field(default_factory=list)
    ui_url: str = ""

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def text(self) -> str:
        return "".join(self.output)

    def check_alive(self) -> None:
        """`up` exits when one of its children dies (it checks them every second)."""
        code = self.process.poll()
        assert code is None, f"`up` exited with {code}:\n{self.text()}"

    def process_groups(self) -> set[int]:
        """The process groups of the stack's children (each leads its own; `up` is in ours)."""
        groups = set()
        for pid in processes_of(self.state_dir):
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        return groups - {os.getpgrp()}

    def interrupt(self, timeout: float = 120) -> int:
        """Ctrl-C; `up`'s exit code, once it exited, with the rest of its output read."""
        assert self.process.stdout is not None
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=timeout)
        self.output.append(self.process.stdout.read())
        return code

    def kill(self) -> None:
        """Last resort after a failure: `up` and every process of its stack."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        for pid in processes_of(self.state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start_up(state_dir: Path) -> UpProcess:
    """`up` on a free port, returned once it says "Press Ctrl-C" (all started, all registered)."""
    command = [sys.executable, "scripts/local_stack.py", "up", "--port", "0"]
    command += ["--state-dir", str(state_dir)]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    up = UpProcess(process, state_dir)
    try:
        assert process.stdout is not None
        for line in process.stdout:  # ends when `up` exits
            up.output.append(line)
            if line.startswith("Prefect UI:"):
                up.ui_url = line.split()[-1]
            if "Press Ctrl-C" in line:
                break
        assert up.ui_url and process.poll() is None, up.text()
    except BaseException:
        up.kill()
        raise
    return up


class SharedStack:
    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._up: UpProcess | None = None

    def running(self) -> UpProcess:
        if self._up is None or self._up.process.poll() is not None:
            self._up = start_up(self._tmp.mktemp("local-stack"))
        return self._up

    def interrupt(self) -> int:
        """Ctrl-C to the running stack; `up`'s exit code."""
        assert self._up is not None, "no stack was started"
        try:
            return self._up.interrupt()
        except BaseException:
            self._up.kill()
            raise

    def close(self) -> None:
        up = self._up
        if up is None or up.process.poll() is not None:
            return
        code = self.interrupt()
        left = processes_of(up.state_dir)
        if left:
            up.kill()
        assert code == 0 and not left, f"Ctrl-C left {left} (exit {code}):\n{up.text()}"


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStack]:
    shared = SharedStack(tmp_path_factory)
    try:
        yield shared
    finally:
        shared.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    users = [item for item in items if FIXTURE in getattr(item, "fixturenames", ())]
    if len(users) < 2:
        return
    first = items.index(users[0])
    moved = {id(item) for item in users}
    rest = [item for item in items if id(item) not in moved]
    items[:] = rest[:first] + users + rest[first:]
