"""The local operating environment's command: starts everything, Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from local.stack import StackError, read_env_file

ROOT = Path(__file__).resolve().parents[2]


def test_env_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "e.env"
    path.write_text("# emulator\nA=1\n\nB=http://127.0.0.1:9/x=y\n")
    assert read_env_file(path) == {"A": "1", "B": "http://127.0.0.1:9/x=y"}
    path.write_text("A=1\nnot a pair\n")
    with pytest.raises(StackError, match=r"e.env:2: expected KEY=VALUE"):
        read_env_file(path)


def _processes_of(state_dir: Path) -> list[int]:
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


@pytest.mark.slow
def test_up_serves_the_ui_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    command = [sys.executable, "scripts/local_stack.py", "up", "--port", "0"]
    command += ["--state-dir", str(state_dir), "--no-register"]
    up = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 300
        ui_url = ""
        for line in up.stdout:
            output.append(line)
            if line.startswith("Prefect UI:"):
                ui_url = line.split()[-1]
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert ui_url, "".join(output)
        page = httpx.get(f"{ui_url}/deployments", headers={"Accept": "text/html"}, timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert httpx.get(f"{ui_url}/api/health", timeout=30).json() is True
        assert len(_processes_of(state_dir)) >= 3  # emulator, server, worker (+ their children)

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=120) == 0
        output.append(up.stdout.read())
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=30)
    assert "Stopped: no process left running." in "".join(output)
    assert _processes_of(state_dir) == []
