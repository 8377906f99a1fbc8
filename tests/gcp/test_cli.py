"""`python -m emulator.gcp` as a process: env file, persistence across restarts, clean shutdown
(no stray process or open port after SIGTERM or SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from google.api_core.client_options import ClientOptions
from google.auth.transport.requests import AuthorizedSession
from google.cloud import artifactregistry_v1, service_usage_v1, storage
from google.oauth2 import service_account

from emulator.gcp import GcpEmulatorProcess, start_gcp_emulator

PROJECT = "cli-project"
KEYS = {
    "OLLAMA_CLOUDRUN_API_ENDPOINT",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "OLLAMA_CLOUDRUN_USER_ADC",  # the ADC file `gcloud auth application-default login` writes
    "GOOGLE_CLOUD_PROJECT",
    "GCE_METADATA_HOST",
    "GCE_METADATA_IP",
}


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def _stop_and_check(emu: GcpEmulatorProcess, sig: signal.Signals) -> None:
    pids = [emu.pid, *_children(emu.pid)]
    assert len(pids) >= 2, "fake-gcs-server should run as a child of the emulator"
    urls = [emu.base_url, emu.env["STORAGE_EMULATOR_HOST"]]
    assert all(_port_open(u) for u in urls)
    os.kill(emu.pid, sig)
    assert emu.process.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
    assert not any(_port_open(u) for u in urls)
    assert not emu.env_file.exists()


def test_state_survives_restart_and_shutdown_is_clean(tmp_path: Path) -> None:
    emu = start_gcp_emulator(tmp_path, project=PROJECT)
    try:
        assert set(emu.env) == KEYS
        assert json.loads(Path(emu.env["OLLAMA_CLOUDRUN_USER_ADC"]).read_text())["type"] == (
            "authorized_user"
        )
        assert emu.log_file.read_text().count("emulator.gcp listening on ") == 1
        base = emu.base_url
        creds = service_account.Credentials.from_service_account_file(
            emu.env["GOOGLE_APPLICATION_CREDENTIALS"],
            scopes=["https://www.googleapis.com/auth/cloud-platform"],
        )
        opts = ClientOptions(api_endpoint=base)
        su = service_usage_v1.ServiceUsageClient(
            credentials=creds, transport="rest", client_options=opts
        )
        su.batch_enable_services(
            request={
                "parent": f"projects/{PROJECT}",
                "service_ids": ["artifactregistry.googleapis.com", "iam.googleapis.com"],
            }
        ).result(timeout=30)
        ar = artifactregistry_v1.ArtifactRegistryClient(
            credentials=creds, transport="rest", client_options=opts
        )
        ar.create_repository(
            parent=f"projects/{PROJECT}/locations/us-central1",
            repository_id="ollama",
            repository=artifactregistry_v1.Repository(format_=1),
        ).result(timeout=30)
        r = AuthorizedSession(creds).post(
            f"{base}/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "ollama-sa"}
        )
        assert r.status_code == 200, r.text
        os.environ["STORAGE_EMULATOR_HOST"] = emu.env["STORAGE_EMULATOR_HOST"]
        try:
            bucket = storage.Client(project=PROJECT).create_bucket("cli-bucket")
            bucket.blob("a.txt").upload_from_string(b"kept")
        finally:
            del os.environ["STORAGE_EMULATOR_HOST"]
        _stop_and_check(emu, signal.SIGTERM)

        emu = start_gcp_emulator(tmp_path, project=PROJECT)
        creds = service_account.Credentials.from_service_account_file(
            emu.env["GOOGLE_APPLICATION_CREDENTIALS"],
            scopes=["https://www.googleapis.com/auth/cloud-platform"],
        )
        opts = ClientOptions(api_endpoint=emu.base_url)
        ar = artifactregistry_v1.ArtifactRegistryClient(
            credentials=creds, transport="rest", client_options=opts
        )
        repo = ar.get_repository(
            name=f"projects/{PROJECT}/locations/us-central1/repositories/ollama"
        )
        assert repo.registry_uri.endswith("/ollama")
        email = f"ollama-sa@{PROJECT}.iam.gserviceaccount.com"
        got = AuthorizedSession(creds).get(
            f"{emu.base_url}/v1/projects/{PROJECT}/serviceAccounts/{email}"
        )
        assert got.status_code == 200
        os.environ["STORAGE_EMULATOR_HOST"] = emu.env["STORAGE_EMULATOR_HOST"]
        try:
            blob = storage.Client(project=PROJECT).bucket("cli-bucket").blob("a.txt")
            assert blob.download_as_bytes() == b"kept"
        finally:
            del os.environ["STORAGE_EMULATOR_HOST"]
        _stop_and_check(emu, signal.SIGINT)
    finally:
        emu.stop()
