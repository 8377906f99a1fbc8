"""The CLI against emulator.gcp: the env file switches everything; errors are one paragraph."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from emulator.gcp import GcpEmulatorProcess
from emulator.ollama.launcher import OllamaServer, running_ollama_server
from tasks.processes import free_port
from tests.flows.conftest import EmulatorControl

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _cli(args: list[str], env_file: Path, prefect_api: str) -> subprocess.CompletedProcess[str]:
    # Only the env file tells the subprocess where Google Cloud is.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "STORAGE_"))}
    env.pop("OLLAMA_CLOUDRUN_API_ENDPOINT", None)
    env["PREFECT_API_URL"] = prefect_api
    return subprocess.run(
        [sys.executable, "-m", "flows", "--env-file", str(env_file), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_teardown_and_failing_smoke_test(
    gcp_emulator: GcpEmulatorProcess, emulator_api: EmulatorControl, prefect_api: str
) -> None:
    ok = _cli(["teardown", "--service", "ollama-cli"], gcp_emulator.env_file, prefect_api)
    assert ok.returncode == 0, ok.stderr
    rows = json.loads(ok.stdout)
    assert len(rows) >= 3 and all(r["result"].startswith("already gone") for r in rows)

    failed = _cli(["smoke-test", "--service", "ollama-missing"], gcp_emulator.env_file, prefect_api)
    assert failed.returncode == 1
    # On a fresh project the Run API is not enabled: one paragraph naming the fix.
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: flow smoke-test failed: AccessDeniedError:")
    assert "gcloud services enable run.googleapis.com" in last
    assert "Traceback" not in failed.stderr


# -- signals and the Prefect server: a batch held by slow sim answers ---------------------------

SLOW_SIM = {"OLLAMA_SIM_SERVICE_SECONDS": "60", "OLLAMA_NUM_PARALLEL": "2"}


def _plain_env(home: Path) -> dict[str, str]:
    """No PREFECT_API_URL (a session fixture may have set one) and a private CLI home."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "OLLAMA_CLOUDRUN_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def _popen(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    # Its own process group: whatever it starts (a temporary Prefect server) stays in it.
    return subprocess.Popen(
        [sys.executable, "-m", "flows", *argv],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _start_batch(
    server: OllamaServer, tmp_path: Path, env: dict[str, str]
) -> subprocess.Popen[str]:
    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"id": f"p{i}", "prompt": f"q{i}"}) for i in range(8)]
    prompts.write_text("\n".join(lines) + "\n")
    output = str(tmp_path / "out")
    return _popen(
        ["batch", "--input", str(prompts), "--output", output, "--target", server.base_url], env
    )


def _wait_for_requests(server: OllamaServer, cli: subprocess.Popen[str], timeout: float) -> None:
    """Until the sim server has loaded the model, i.e. the batch sent its first prompts."""
    deadline = time.monotonic() + timeout
    while not httpx.get(server.base_url + "/api/ps", timeout=10).json()["models"]:
        assert cli.poll() is None, cli.communicate()
        assert time.monotonic() < deadline, "the batch sent no request"
        time.sleep(0.5)
    time.sleep(2)  # the shard task is now waiting on its requests


def _group(pgid: int) -> list[str]:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()


def _stopped(cli: subprocess.Popen[str], code: int, name: str, command: str = "batch") -> str:
    """Its stderr, once it exited with ``code`` saying so in one line, with its group empty."""
    try:
        _, stderr = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    assert cli.returncode == code, stderr
    assert f"ollama-cloudrun {command}: stopped by {name}" in stderr
    assert "Traceback" not in stderr and "TerminationSignal" not in stderr
    deadline = time.monotonic() + 15
    while _group(cli.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _group(cli.pid) == []  # nothing it started is left running
    return stderr


def test_sigterm_stops_a_batch_with_143_and_leaves_nothing_running(tmp_path: Path) -> None:
    with running_ollama_server(engine="sim", models=["gemma2:9b"], env=SLOW_SIM) as server:
        # The temporary server logs its services at DEBUG (with --verbose they reach the console;
        # its "database is locked" tracebacks come from these loggers): here they must not.
        env = {**_plain_env(tmp_path / "home"), "PREFECT_SERVER_LOGGING_LEVEL": "DEBUG"}
        cli = _start_batch(server, tmp_path, env)
        _wait_for_requests(server, cli, timeout=300)  # after the temporary Prefect server
        cli.send_signal(signal.SIGTERM)
        stderr = _stopped(cli, 143, "SIGTERM")
    assert "No PREFECT_API_URL: starting a temporary Prefect server" in stderr
    assert "prefect.server" not in stderr and "uvicorn" not in stderr


def test_server_command_is_reused_and_sigint_stops_a_batch_with_130(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _plain_env(home)
    server_cli = _popen(["server", "--port", str(free_port())], env)
    state = home / "prefect-server.json"
    try:
        deadline = time.monotonic() + 300
        while not state.exists():
            assert server_cli.poll() is None, server_cli.communicate()
            assert time.monotonic() < deadline, "ollama-cloudrun server never became ready"
            time.sleep(0.5)
        recorded = json.loads(state.read_text())
        api_url, prefect_pid = recorded["api_url"], recorded["pid"]
        assert httpx.get(api_url + "/health", timeout=10).status_code == 200
        with running_ollama_server(engine="sim", models=["gemma2:9b"], env=SLOW_SIM) as server:
            cli = _start_batch(server, tmp_path, env)
            _wait_for_requests(server, cli, timeout=120)
            cli.send_signal(signal.SIGINT)
            stderr = _stopped(cli, 130, "SIGINT")
        assert f"Using the Prefect server of `ollama-cloudrun server` at {api_url}" in stderr
        assert "temporary" not in stderr
        server_cli.send_signal(signal.SIGTERM)
        server_err = _stopped(server_cli, 143, "SIGTERM", command="server")
        assert f"export PREFECT_API_URL={api_url}" in server_err
        assert not state.exists()
        assert _group(prefect_pid) == []  # `prefect server start` ran in a group of its own
    finally:
        if server_cli.poll() is None:
            os.killpg(server_cli.pid, signal.SIGKILL)
