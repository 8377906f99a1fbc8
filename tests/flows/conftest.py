"""Fixtures for the deploy / smoke test / teardown flows against `emulator.gcp`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest


@pytest.fixture
def emulator_api(gcp_env: dict[str, str], prefect_api: str) -> Iterator[EmulatorControl]:
    """The emulator's control endpoints, with the Prefect test server running."""
    yield EmulatorControl(gcp_env["OLLAMA_CLOUDRUN_API_ENDPOINT"], gcp_env["GOOGLE_CLOUD_PROJECT"])


class EmulatorControl:
    def __init__(self, base_url: str, project: str) -> None:
        self.base_url = base_url
        self.project = project

    def configure(self, **config: Any) -> None:
        httpx.post(f"{self.base_url}/_emulator/config", json=config, timeout=30).raise_for_status()

    def state(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/_emulator/state", timeout=30)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


@pytest.fixture
def service_id() -> str:
    return f"ollama-{uuid.uuid4().hex[:8]}"
