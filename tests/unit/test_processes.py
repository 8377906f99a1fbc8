"""The shared process helper and env-file parser (tasks/processes.py, tasks/env_files.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.env_files import EnvFileError, parse_env_file
from tasks.processes import group_alive, stop_process, wait_ready

# Ignores SIGTERM (and SIGINT); starts a grandchild that sleeps, then sleeps itself.
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def _stubborn() -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_a_child_that_ignores_sigterm_is_killed_with_its_group() -> None:
    process = _stubborn()
    assert stop_process(process, grace=0.5, signals=(signal.SIGINT, signal.SIGTERM), group=True)
    assert process.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10  # the grandchild, orphaned, is reaped by init
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(process.pid)  # it went with its parent


def test_a_polite_child_stops_on_sigterm() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    assert stop_process(process, grace=30) == -signal.SIGTERM
    assert stop_process(process) == -signal.SIGTERM  # stopping twice is harmless


def test_wait_ready_reports_an_early_exit_and_a_timeout() -> None:
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="thing exited with code 3 before it was ready"):
        wait_ready(done, lambda: False, timeout=30, what="thing")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with pytest.raises(RuntimeError, match="was not ready after 0 s"):
            wait_ready(sleeper, lambda: False, timeout=0.2, what="thing")
        wait_ready(sleeper, lambda: True, timeout=0.2, what="thing")
    finally:
        stop_process(sleeper)


def test_env_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "a.env"
    path.write_text("# comment\n\nexport A=1\nB = 'two words'\nC=\"x=y\"\nD=\nE=http://h:1/p?q=2\n")
    assert parse_env_file(path) == {
        "A": "1",
        "B": "two words",
        "C": "x=y",
        "D": "",
        "E": "http://h:1/p?q=2",
    }
    path.write_text("A=1\nnot a line\n")
    with pytest.raises(EnvFileError, match=r"a\.env:2: expected KEY=VALUE"):
        parse_env_file(path)
    path.write_text("BAD KEY=1\n")
    with pytest.raises(EnvFileError):
        parse_env_file(path)
