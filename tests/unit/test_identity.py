"""tasks.identity: the member and the ID-token source chosen per credential type.

google-auth's real credential classes; what would be Google (token endpoint, IAM Credentials, the
metadata server) is a tiny local HTTP server or, for the metadata server, google-auth's own
``_metadata`` helpers replaced (its host is read at import time; the end-to-end test runs that path
in a subprocess against emulator.gcp).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import compute_engine, impersonated_credentials
from google.auth.compute_engine import credentials as gce_credentials
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from tasks import clients
from tasks.errors import ConfigurationError, IdTokenError
from tasks.identity import identify

USER = "dev@example.com"
TARGET = "deployer@unit-project.iam.gserviceaccount.com"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT: tasks.identity reads claims of tokens it got from Google itself."""
    header = _b64(b'{"alg":"RS256","typ":"JWT"}')
    return f"{header}.{_b64(json.dumps(claims).encode())}.c2ln"


@dataclass
class FakeGoogle:
    """Token endpoint (refresh grant) and IAM Credentials generateIdToken."""

    url: str = ""
    requests: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    id_token: bool = True


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    state = FakeGoogle()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
            now = int(time.time())
            if self.path == "/token":
                form = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                state.requests.append((self.path, form, ""))
                body: dict[str, Any] = {"access_token": "ya29.user", "expires_in": 3600}
                if state.id_token:
                    body["id_token"] = _jwt(
                        {
                            "aud": form["client_id"],
                            "email": USER,
                            "email_verified": True,
                            "exp": now + 3600,
                        }
                    )
            else:
                data = json.loads(raw)
                state.requests.append((self.path, data, self.headers.get("Authorization", "")))
                body = {"token": _jwt({"aud": data["audience"], "email": TARGET, "exp": now + 60})}
            out = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next poll: 0.05 s, not its 0.5 s default
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _user(token_uri: str) -> user_credentials.Credentials:
    return user_credentials.Credentials(
        token=None,
        refresh_token="1//refresh",
        token_uri=token_uri,
        client_id="764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com",
        client_secret="secret",
        scopes=[clients.CLOUD_PLATFORM_SCOPE],
    )


def _key_info() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "unit-project",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "runner@unit-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    }


def test_service_account_key_member_needs_no_network() -> None:
    creds = service_account.Credentials.from_service_account_info(_key_info())
    who = identify(creds)
    assert who.member == "serviceAccount:runner@unit-project.iam.gserviceaccount.com"
    assert (
        repr(who) == "Identity(member='serviceAccount:runner@unit-project.iam.gserviceaccount.com')"
    )


def test_metadata_server_email_is_read_after_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def info(request: Any, service_account: str = "default") -> dict[str, Any]:
        asked.append(service_account)
        return {"email": "worker@unit-project.iam.gserviceaccount.com", "scopes": ["x"]}

    def token(request: Any, service_account: str = "default", scopes: Any = None) -> Any:
        import datetime as dt

        return "ya29.gce", dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=1)

    monkeypatch.setattr(gce_credentials._metadata, "get_service_account_info", info)
    monkeypatch.setattr(gce_credentials._metadata, "get_service_account_token", token)
    creds = compute_engine.Credentials()
    assert creds.service_account_email == "default"  # what caller_member used to read
    who = identify(creds)
    assert who.member == "serviceAccount:worker@unit-project.iam.gserviceaccount.com"
    assert asked == ["default"]


def test_user_credentials_member_and_id_token_from_the_refresh(google: FakeGoogle) -> None:
    who = identify(_user(f"{google.url}/token"))
    assert who.member == f"user:{USER}"
    token, expiry = who.id_tokens.fetch("https://svc.example")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"].endswith(".apps.googleusercontent.com")  # the OAuth client, as Google
    assert expiry.year >= 2024
    grants = [form for path, form, _ in google.requests if path == "/token"]
    assert all(g["grant_type"] == "refresh_token" for g in grants)
    assert all("scope" not in g for g in grants)  # the login's scopes, openid included


def test_user_credentials_without_id_token_say_how_to_fix(google: FakeGoogle) -> None:
    google.id_token = False
    with pytest.raises(IdTokenError, match="application-default login"):
        identify(_user(f"{google.url}/token"))


def test_impersonation_member_is_the_target_and_tokens_come_from_iam_credentials(
    google: FakeGoogle,
) -> None:
    creds = impersonated_credentials.Credentials(
        source_credentials=_user(f"{google.url}/token"),
        target_principal=TARGET,
        target_scopes=[clients.CLOUD_PLATFORM_SCOPE],
    )
    who = identify(creds, iam_credentials_endpoint=google.url)
    assert who.member == f"serviceAccount:{TARGET}"
    assert google.requests == []  # the member needs no call
    token, _ = who.id_tokens.fetch("https://svc.example")
    path, body, authorization = google.requests[-1]
    assert path == f"/v1/projects/-/serviceAccounts/{TARGET}:generateIdToken"
    assert body == {"audience": "https://svc.example", "delegates": None, "includeEmail": True}
    assert authorization == "Bearer ya29.user"  # the source credentials authorize the call
    assert token.count(".") == 2


def test_unsupported_credentials_are_a_clear_error() -> None:
    from google.auth import credentials as base

    class Anonymous(base.AnonymousCredentials):
        pass

    with pytest.raises(ConfigurationError, match="not supported for ID tokens"):
        identify(Anonymous())


def test_emulator_endpoint_rewrites_where_credentials_refresh() -> None:
    user = clients._to_endpoint(_user("https://oauth2.googleapis.com/token"), "http://127.0.0.1:1")
    assert isinstance(user, user_credentials.Credentials)
    assert user.token_uri == "http://127.0.0.1:1/token"
    imp = clients._to_endpoint(
        impersonated_credentials.Credentials(
            source_credentials=_user("https://oauth2.googleapis.com/token"),
            target_principal=TARGET,
            target_scopes=[clients.CLOUD_PLATFORM_SCOPE],
        ),
        "http://127.0.0.1:1",
    )
    assert isinstance(imp, impersonated_credentials.Credentials)
    assert imp._iam_endpoint_override == (
        f"http://127.0.0.1:1/v1/projects/-/serviceAccounts/{TARGET}:generateAccessToken"
    )
    assert imp._source_credentials.token_uri == "http://127.0.0.1:1/token"
    sa = service_account.Credentials.from_service_account_info(_key_info())
    assert clients._to_endpoint(sa, "http://127.0.0.1:1") is sa  # its key file names token_uri


def test_impersonation_env_wraps_the_resolved_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    key = tmp_path / "sa.json"
    key.write_text(json.dumps(_key_info()))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.delenv(clients.API_ENDPOINT_ENV, raising=False)
    monkeypatch.setenv(clients.IMPERSONATE_ENV, TARGET)
    creds, project = clients.resolve_credentials()
    assert project == "unit-project"
    assert isinstance(creds, impersonated_credentials.Credentials)
    assert identify(creds).member == f"serviceAccount:{TARGET}"
