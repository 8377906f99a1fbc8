"""An in-process emulator (no fake-gcs-server) and the official clients pointed at it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import artifactregistry_v1, service_usage_v1
from google.oauth2 import service_account

from emulator.gcp.app import create_app, create_emulator
from emulator.gcp.config import EmulatorConfig
from emulator.gcp.registry import Emulator

PROJECT = "test-project"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


@dataclass
class LocalGcp:
    emulator: Emulator
    base_url: str
    key_info: dict[str, str]

    def credentials(self) -> Credentials:
        return service_account.Credentials.from_service_account_info(self.key_info, scopes=SCOPES)

    def client(self, cls: Any, anonymous: bool = False) -> Any:
        creds = AnonymousCredentials() if anonymous else self.credentials()
        options = ClientOptions(api_endpoint=self.base_url)
        return cls(credentials=creds, transport="rest", client_options=options)

    def enable(self, *services: str) -> None:
        self.emulator.service_usage.enable(PROJECT, list(services))


@pytest.fixture(scope="module")
def local_gcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGcp]:
    """uvicorn in a thread serving the app on a free port; state in a tmp dir."""
    state_dir: Path = tmp_path_factory.mktemp("local-gcp")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = EmulatorConfig(project=PROJECT, port=port, state_dir=state_dir, build_seconds=0)
    emulator = create_emulator(config)
    base = f"http://127.0.0.1:{port}"
    info = emulator.signer.service_account_info(PROJECT, f"{base}/token")
    server = uvicorn.Server(
        uvicorn.Config(create_app(emulator), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "in-process emulator did not start"
        time.sleep(0.02)
    try:
        yield LocalGcp(emulator, base, info)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def local_gcp(local_gcp_server: LocalGcp) -> Iterator[LocalGcp]:
    """The in-process emulator, reset after each test."""
    initial = local_gcp_server.emulator.config
    yield local_gcp_server
    local_gcp_server.emulator.config = initial
    local_gcp_server.emulator.reset()


@pytest.fixture
def su_client(local_gcp: LocalGcp) -> service_usage_v1.ServiceUsageClient:
    return local_gcp.client(service_usage_v1.ServiceUsageClient)


@pytest.fixture
def ar_client(local_gcp: LocalGcp) -> artifactregistry_v1.ArtifactRegistryClient:
    return local_gcp.client(artifactregistry_v1.ArtifactRegistryClient)
