"""Tokens as google-auth fetches them: the key file's token endpoint, the metadata server
(in a subprocess: GCE_METADATA_HOST is read at import) and IAM Credentials generateIdToken."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import google.auth.transport.requests as gar
import httpx
import pytest
from google.api_core import exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import service_usage_v1
from google.oauth2 import id_token, service_account

from emulator.gcp.auth import InvalidToken, _new_key, admin_email
from tests.gcp.conftest import PROJECT, LocalGcp

AUDIENCE = "http://127.0.0.1:9/ollama-gemma"


def _key_file(local_gcp: LocalGcp, tmp_path: Path) -> Path:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(local_gcp.key_info))
    return path


def test_fetch_id_token_from_key_file(
    local_gcp: LocalGcp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_key_file(local_gcp, tmp_path)))
    token = id_token.fetch_id_token(gar.Request(), AUDIENCE)
    claims = local_gcp.emulator.signer.verify_id_token(token, AUDIENCE)
    assert claims["email"] == admin_email(PROJECT)
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["exp"] - claims["iat"] == 3600
    with pytest.raises(InvalidToken):
        local_gcp.emulator.signer.verify_id_token(token, "http://other-audience")
    # Verifiable with google-auth against the emulator's published certs.
    verified = id_token.verify_token(
        token, gar.Request(), audience=AUDIENCE, certs_url=f"{local_gcp.base_url}/oauth2/v1/certs"
    )
    assert verified["sub"] == claims["sub"]


def test_token_lifetime_is_configurable_and_expiry_enforced(local_gcp: LocalGcp) -> None:
    local_gcp.emulator.config = local_gcp.emulator.config.model_copy(
        update={"token_lifetime_seconds": 1}
    )
    creds = service_account.IDTokenCredentials.from_service_account_info(
        local_gcp.key_info, target_audience=AUDIENCE
    )
    creds.refresh(gar.Request())
    local_gcp.emulator.signer.verify_id_token(creds.token, AUDIENCE)
    time.sleep(2.1)
    with pytest.raises(InvalidToken, match="expired"):
        local_gcp.emulator.signer.verify_id_token(creds.token, AUDIENCE)


def test_access_token_from_key_file_authorizes_calls(local_gcp: LocalGcp) -> None:
    creds = local_gcp.credentials()
    assert isinstance(creds, service_account.Credentials)
    creds.refresh(gar.Request())  # jwt-bearer grant with `scope` at the emulator's /token
    assert creds.token.startswith("ya29.")
    assert local_gcp.emulator.signer.verify_access_token(creds.token) == admin_email(PROJECT)


def test_assertion_signed_with_another_key_is_refused(local_gcp: LocalGcp) -> None:
    forged = dict(local_gcp.key_info, private_key=_new_key())
    creds = service_account.Credentials.from_service_account_info(
        forged, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    with pytest.raises(auth_exceptions.RefreshError, match="invalid_grant"):
        creds.refresh(gar.Request())


def test_invalid_bearer_token_is_401(local_gcp: LocalGcp) -> None:
    class Bad(Credentials):  # type: ignore[misc]
        def refresh(self, request: object) -> None:
            self.token = "ya29.not-a-token"
            self.expiry = None

    client = local_gcp.client(service_usage_v1.ServiceUsageClient, anonymous=True)
    client._transport._session.credentials = Bad()
    with pytest.raises(exceptions.Unauthorized):
        client.get_service(request={"name": f"projects/{PROJECT}/services/run.googleapis.com"})


def test_generate_id_token(local_gcp: LocalGcp) -> None:
    local_gcp.enable("iamcredentials.googleapis.com", "iam.googleapis.com")
    session = AuthorizedSession(local_gcp.credentials())
    sa = session.post(
        f"{local_gcp.base_url}/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "invoker"}
    ).json()
    url = f"{local_gcp.base_url}/v1/projects/-/serviceAccounts/{sa['email']}:generateIdToken"
    r = session.post(url, json={"audience": AUDIENCE, "includeEmail": True})
    assert r.status_code == 200, r.text
    claims = local_gcp.emulator.signer.verify_id_token(r.json()["token"], AUDIENCE)
    assert claims["email"] == sa["email"]
    assert httpx.post(url, json={"audience": AUDIENCE}).status_code == 401  # anonymous
    missing = url.replace("invoker@", "nobody1@")
    assert session.post(missing, json={"audience": AUDIENCE}).status_code == 404


def test_metadata_requires_flavor_header(local_gcp: LocalGcp) -> None:
    url = f"{local_gcp.base_url}/computeMetadata/v1/project/project-id"
    assert httpx.get(url).status_code == 403
    r = httpx.get(url, headers={"Metadata-Flavor": "Google"})
    assert (r.status_code, r.text, r.headers["metadata-flavor"]) == (200, PROJECT, "Google")


_METADATA_SCRIPT = """
import json, sys
import google.auth.transport.requests as gar
from google.auth import compute_engine
from google.auth.compute_engine import _metadata
request = gar.Request()
assert _metadata.ping(request)
creds = compute_engine.IDTokenCredentials(request, sys.argv[1], use_metadata_identity_endpoint=True)
creds.refresh(request)
access = compute_engine.Credentials()
access.refresh(request)
print(json.dumps({"id_token": creds.token, "email": creds.service_account_email,
                  "access": access.token, "project": _metadata.get_project_id(request)}))
"""


def test_metadata_server_with_compute_engine_credentials(local_gcp: LocalGcp) -> None:
    host = local_gcp.base_url.removeprefix("http://")
    env = {"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _METADATA_SCRIPT, AUDIENCE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    claims = local_gcp.emulator.signer.verify_id_token(result["id_token"], AUDIENCE)
    assert claims["email"] == result["email"] == admin_email(PROJECT)
    assert local_gcp.emulator.signer.verify_access_token(result["access"]) == admin_email(PROJECT)
    assert result["project"] == PROJECT
