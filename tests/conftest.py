"""Test-wide settings and the one Prefect test server shared by the whole session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.plugins.ollama_server",
    "tests.plugins.gcp_emulator",
    "tests.plugins.local_stack",
]

# Quiet, sandboxed Prefect: an accidental temporary server never touches ~/.prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prefect-home-")
os.environ.update(
    {
        "PREFECT_HOME": _PREFECT_HOME,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DO_NOT_TRACK": "1",
    }
)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One `prefect_test_harness` per session (~11 s); yields PREFECT_API_URL for subprocesses.

    Flow-run heartbeats are off for the flows tests run in process: Prefect's sync engine joins
    its heartbeat thread at the end of every flow run, and that thread sleeps in whole seconds,
    so each run ended up to 1 s late (0.8 s a run measured on 2 loaded cores; a sweep test runs
    ~90). Heartbeats only let the server mark a silent run Crashed; no test is about them.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    no_heartbeats = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    with prefect_test_harness(server_startup_timeout=180), no_heartbeats:
        url = PREFECT_API_URL.value()
        assert url, "prefect_test_harness did not set PREFECT_API_URL"
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)
