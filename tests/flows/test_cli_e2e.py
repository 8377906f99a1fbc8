"""The CLI against emulator.gcp: the env file switches everything; errors are one paragraph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.gcp import GcpEmulatorProcess
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
