"""Fixtures that start `emulator.gcp` for tests.

- `gcp_emulator` (session): one `python -m emulator.gcp` subprocess (sim engine, 0.5 s
  builds, tmp state dir); yields the `GcpEmulatorProcess` (`.base_url`, `.env`, `.env_file`,
  `.stop()`).
- `gcp_env` (function): os.environ patched with the emulator's env file; afterwards the emulator
  is reset (`POST /_emulator/reset`) and its run-time config restored. Note: google-auth reads
  `GCE_METADATA_HOST` at import time, so metadata-server tests need a subprocess.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emulator.gcp import GcpEmulatorProcess, running_gcp_emulator


@pytest.fixture(scope="session")
def gcp_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcpEmulatorProcess]:
    state_dir = tmp_path_factory.mktemp("gcp-emulator")
    # Builds take 0.5 s instead of the emulator's 2 s: still running when deploy's build task
    # first polls (tasks/cloud_build.py polls every second), but ~20 deploys that build in the
    # session no longer wait the extra seconds. Tests about build timing configure their own.
    with running_gcp_emulator(state_dir, ollama_engine="sim", build_seconds=0.5) as emu:
        yield emu


@pytest.fixture
def gcp_env(
    gcp_emulator: GcpEmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    base = gcp_emulator.base_url
    config: dict[str, Any] = httpx.get(f"{base}/_emulator/state", timeout=30).json()["config"]
    for key, value in gcp_emulator.env.items():
        monkeypatch.setenv(key, value)
    yield dict(gcp_emulator.env)
    runtime = {
        k: config[k]
        for k in (
            "build_seconds",
            "propagation_delay_seconds",
            "gpu_quota",
            "token_lifetime_seconds",
            "operation_polls",
            "cloud_run_cold_start_seconds",
            "cloud_run_idle_tail_seconds",
            "monitoring_sample_seconds",
            "sim_env",
            "service_account_propagation_seconds",
            "iam_propagation_seconds",
        )
    }
    httpx.post(f"{base}/_emulator/config", json=runtime, timeout=30).raise_for_status()
    httpx.post(f"{base}/_emulator/reset", timeout=60).raise_for_status()
