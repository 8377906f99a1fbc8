"""The local operating environment's command: starts everything, Ctrl-C stops everything."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from local.stack import LocalStack, StackConfig, StackError, read_env_file
from tests.plugins.local_stack import SharedStack, processes_of


def test_env_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "e.env"
    path.write_text("# emulator\nA=1\n\nB=http://127.0.0.1:9/x=y\n")
    assert read_env_file(path) == {"A": "1", "B": "http://127.0.0.1:9/x=y"}
    path.write_text("A=1\nnot a pair\n")
    with pytest.raises(StackError, match=r"e.env:2: expected KEY=VALUE"):
        read_env_file(path)


def test_worker_limit_reaches_each_worker_and_below_one_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from local.cli import app

    limited = LocalStack(StackConfig(state_dir=tmp_path, worker_limit=1))
    assert limited.worker_argv(2)[-4:] == ["--name", "local-worker-2", "--limit", "1"]
    assert "--limit" not in LocalStack(StackConfig(state_dir=tmp_path)).worker_argv(1)
    refused = CliRunner().invoke(app, ["up", "--state-dir", str(tmp_path), "--worker-limit", "0"])
    assert refused.exit_code == 2 and "--worker-limit" in refused.output
    assert "must be at least 1" in refused.output
    assert not (tmp_path / "logs").exists()  # refused before anything started


@pytest.mark.slow
def test_up_serves_the_ui_and_ctrl_c_leaves_no_process(local_stack: SharedStack) -> None:
    # The session's `up` (tests/plugins/local_stack.py), started here unless the browser test
    # already did: `scripts/local_stack.py up --port 0 --state-dir DIR`, read until "Press Ctrl-C".
    up = local_stack.running()
    page = httpx.get(f"{up.ui_url}/deployments", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{up.ui_url}/api/health", timeout=30).json() is True
    assert len(processes_of(up.state_dir)) >= 3  # emulator, server, worker (+ their children)

    assert local_stack.interrupt() == 0  # Ctrl-C
    assert "Stopped: no process left running." in up.text()
    assert processes_of(up.state_dir) == []
