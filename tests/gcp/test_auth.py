"""Tokens as google-auth fetches them: the key file's token endpoint, the metadata server
(in a subprocess: GCE_METADATA_HOST is read at import); every admin API (IAM Credentials too:
test_iam_credentials) refuses a call without a valid access token with Google's 401."""

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

from emulator.gcp.auth import InvalidToken, TokenSigner, _new_key, admin_email
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


# Google's texts (see emulator/gcp/errors.py for the sources), written out here so that a change
# to the emulator's constants cannot pass unnoticed.
MISSING = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
INVALID = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
SA = f"runtime@{PROJECT}.iam.gserviceaccount.com"
LOC = f"projects/{PROJECT}/locations/us-central1"
# One call of each emulated admin API (method, path, the API's service name).
ADMIN_CALLS = [
    ("GET", f"/v1/projects/{PROJECT}/services/run.googleapis.com", "serviceusage.googleapis.com"),
    ("GET", f"/v1/{LOC}/repositories", "artifactregistry.googleapis.com"),
    ("GET", f"/v1/projects/{PROJECT}/serviceAccounts", "iam.googleapis.com"),
    (
        "POST",
        f"/v1/projects/-/serviceAccounts/{SA}:generateIdToken",
        "iamcredentials.googleapis.com",
    ),
    ("GET", f"/v1/projects/{PROJECT}/builds", "cloudbuild.googleapis.com"),
    ("GET", f"/v1/{LOC}/builds", "cloudbuild.googleapis.com"),
    ("GET", f"/v2/{LOC}/services", "run.googleapis.com"),
    ("GET", f"/v2/{LOC}/services/ollama-gemma:getIamPolicy", "run.googleapis.com"),
    ("GET", "/v1/operations/acat.p2-1-2", None),
    ("GET", f"/v1/{LOC}/operations/op-1", None),
]


def _error(response: httpx.Response) -> tuple[str, str, dict[str, object]]:
    body = response.json()["error"]
    assert body["code"] == response.status_code == 401
    assert body["status"] == "UNAUTHENTICATED"
    (info,) = body["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["domain"] == "googleapis.com"
    return body["message"], info["reason"], info.get("metadata", {})


@pytest.mark.parametrize(("method", "path", "service"), ADMIN_CALLS)
def test_admin_api_without_credentials_is_401(
    local_gcp: LocalGcp, method: str, path: str, service: str | None
) -> None:
    """curl without a token: 401 CREDENTIALS_MISSING, before the API's enablement is checked."""
    url = local_gcp.base_url + path
    r = httpx.request(method, url, json={"audience": AUDIENCE} if method == "POST" else None)
    assert r.headers["www-authenticate"] == 'Bearer realm="https://accounts.google.com/"'
    message, reason, metadata = _error(r)
    assert (message, reason) == (MISSING, "CREDENTIALS_MISSING")
    assert metadata == ({"service": service} if service else {})
    # Not a bearer token either (an API key in the header, Basic auth): still missing.
    r = httpx.request(method, url, headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert _error(r)[1] == "CREDENTIALS_MISSING"


@pytest.fixture(scope="module")
def foreign() -> TokenSigner:
    """Another emulator's keys."""
    return TokenSigner.generate()


@pytest.mark.parametrize(("method", "path", "service"), ADMIN_CALLS)
def test_admin_api_with_a_bad_token_is_401(
    local_gcp: LocalGcp, foreign: TokenSigner, method: str, path: str, service: str | None
) -> None:
    signer = local_gcp.emulator.signer
    email = admin_email(PROJECT)
    forged = signer.mint_access_token(email).rsplit(".", 1)[0] + ".AAAA"
    tokens = {
        "garbage": "ACCESS_TOKEN_TYPE_UNSUPPORTED",
        forged: "ACCESS_TOKEN_TYPE_UNSUPPORTED",  # the emulator did not mint it
        signer.mint_id_token(email, AUDIENCE): "ACCESS_TOKEN_TYPE_UNSUPPORTED",  # an ID token
        foreign.mint_access_token(email): "ACCESS_TOKEN_TYPE_UNSUPPORTED",  # another emulator's
        signer.mint_access_token(email, lifetime=-5): "ACCESS_TOKEN_EXPIRED",
    }
    for token, expected in tokens.items():
        r = httpx.request(method, local_gcp.base_url + path, headers=_bearer(token))
        assert r.headers["www-authenticate"] == (
            'Bearer realm="https://accounts.google.com/", error="invalid_token"'
        )
        message, reason, metadata = _error(r)
        assert (message, reason) == (INVALID, expected)
        assert metadata == ({"service": service} if service else {})
    # The token the emulator minted passes authentication (the call may then fail otherwise:
    # the API is not enabled, the resource does not exist).
    good = httpx.request(method, local_gcp.base_url + path, headers=_bearer(_access(local_gcp)))
    assert good.status_code != 401, good.text


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _access(local_gcp: LocalGcp) -> str:
    creds = local_gcp.credentials()
    creds.refresh(gar.Request())
    token: str = creds.token
    return token


def test_curl_cannot_create_or_delete_a_service_account(local_gcp: LocalGcp) -> None:
    local_gcp.enable("iam.googleapis.com")
    base = f"{local_gcp.base_url}/v1/projects/{PROJECT}/serviceAccounts"
    assert httpx.post(base, json={"accountId": "sneaky"}).status_code == 401
    assert local_gcp.emulator.iam.list(PROJECT) == []
    session = AuthorizedSession(local_gcp.credentials())
    created = session.post(base, json={"accountId": "runtime"})
    assert created.status_code == 200, created.text
    assert httpx.delete(f"{base}/{created.json()['email']}").status_code == 401
    assert [a["email"] for a in local_gcp.emulator.iam.list(PROJECT)] == [SA]
    assert session.delete(f"{base}/{SA}").status_code == 200


def test_what_google_serves_without_credentials_stays_open(local_gcp: LocalGcp) -> None:
    base = local_gcp.base_url
    assert httpx.get(f"{base}/oauth2/v3/certs").status_code == 200
    assert httpx.get(f"{base}/oauth2/v1/certs").status_code == 200
    assert httpx.get(f"{base}/").status_code == 200  # the metadata server's ping
    flavor = {"Metadata-Flavor": "Google"}
    token = httpx.get(
        f"{base}/computeMetadata/v1/instance/service-accounts/default/token", headers=flavor
    )
    assert token.status_code == 200
    assert httpx.get(f"{base}/_emulator/state").status_code == 200
    # The token endpoint answers an anonymous POST (its own errors are OAuth's, not a 401).
    assert httpx.post(f"{base}/token", data={"grant_type": "x"}).json() == {
        "error": "unsupported_grant_type",
        "error_description": "Invalid grant_type.",
    }


class _Token(Credentials):  # type: ignore[misc]
    """Credentials that send `token` as is (None: no Authorization header at all)."""

    def __init__(self, token: str | None) -> None:
        super().__init__()
        self.fixed = token

    def refresh(self, request: object) -> None:
        self.token, self.expiry = self.fixed, None

    def apply(self, headers: dict[str, str], token: str | None = None) -> None:
        if self.fixed is not None:
            super().apply(headers, token)

    @property
    def valid(self) -> bool:
        return self.token is not None


def test_official_client_without_or_with_a_bad_token_raises_unauthorized(
    local_gcp: LocalGcp,
) -> None:
    """Over REST, google.api_core picks the exception class from the HTTP status alone: a 401 is
    `Unauthorized` (the first class registered for 401; its subclass `Unauthenticated` is what the
    gRPC transport raises for UNAUTHENTICATED) — what Google's 401 gives the REST clients too."""
    name = f"projects/{PROJECT}/services/run.googleapis.com"

    def client_with(token: str | None) -> service_usage_v1.ServiceUsageClient:
        client = local_gcp.client(service_usage_v1.ServiceUsageClient, anonymous=True)
        client._transport._session.credentials = _Token(token)
        return client  # type: ignore[no-any-return]

    with pytest.raises(exceptions.Unauthorized) as missing:
        client_with(None).get_service(request={"name": name})
    assert exceptions.exception_class_for_http_status(401) is type(missing.value)
    assert missing.value.code == 401
    assert missing.value.reason == "CREDENTIALS_MISSING"
    assert missing.value.domain == "googleapis.com"
    assert missing.value.metadata == {"service": "serviceusage.googleapis.com"}
    assert missing.value.message.endswith(MISSING)

    with pytest.raises(exceptions.Unauthorized) as invalid:
        client_with("ya29.not-a-token").get_service(request={"name": name})
    assert invalid.value.reason == "ACCESS_TOKEN_TYPE_UNSUPPORTED"
    assert invalid.value.message.endswith(INVALID)

    # AnonymousCredentials: google-auth's session answers the 401 by refreshing them, which they
    # refuse (as against Google): the call fails instead of being served.
    anonymous = local_gcp.client(service_usage_v1.ServiceUsageClient, anonymous=True)
    with pytest.raises(auth_exceptions.InvalidOperation, match="cannot be refreshed"):
        anonymous.get_service(request={"name": name})

    # The same client with the key file's credentials is served.
    good = local_gcp.client(service_usage_v1.ServiceUsageClient)
    assert good.get_service(request={"name": name}).name.endswith("/services/run.googleapis.com")


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
