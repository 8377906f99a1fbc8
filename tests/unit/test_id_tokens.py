"""GoogleIdTokenAuth through google-auth's real service-account ID-token path (tasks.identity).

A generated service-account key file whose ``token_uri`` points at a tiny local token endpoint (the
same JWT-bearer grant Google's OAuth endpoint answers), and an httpx MockTransport standing in for
the private service, which accepts only the most recently minted token.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tasks.errors import IdTokenError
from tasks.id_tokens import GoogleIdTokenAuth
from tasks.identity import IdTokenSource, identify

AUDIENCE = "http://127.0.0.1:9/"


def _tokens() -> IdTokenSource:
    """The ID-token source of the key file the fixture wrote."""
    from google.oauth2 import service_account

    path = os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
    return identify(service_account.Credentials.from_service_account_file(path)).id_tokens


class _NoTokens:
    def fetch(self, audience: str) -> tuple[str, dt.datetime]:
        raise AssertionError("not fetched")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenEndpoint:
    lifetime: float = 3600.0
    issued: list[str] = field(default_factory=list)
    audiences: list[str] = field(default_factory=list)
    fail: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mint(self, audience: str) -> str:
        with self.lock:
            now = time.time()
            claims = {"aud": audience, "iat": int(now), "exp": int(now + self.lifetime)}
            claims["n"] = len(self.issued)
            token = ".".join(
                [_b64(b'{"alg":"RS256","typ":"JWT"}'), _b64(json.dumps(claims).encode()), "c2ln"]
            )
            self.issued.append(token)
            self.audiences.append(audience)
            return token


@pytest.fixture
def token_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenEndpoint]:
    state = TokenEndpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            form = urllib.parse.parse_qs(body)
            assertion = form["assertion"][0]
            payload = assertion.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            if state.fail:
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"error":"invalid_grant","error_description":"bad key"}')
                return
            token = state.mint(claims["target_audience"])
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"id_token": token}).encode())

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next poll: 0.05 s, not its 0.5 s default
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    key_file = tmp_path / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "unit-project",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "tester@unit-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"http://127.0.0.1:{server.server_port}/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _service(state: TokenEndpoint, seen: list[str]) -> httpx.MockTransport:
    """A private service: 200 only for the newest token, 401 otherwise."""

    def handler(request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization", "")
        seen.append(header)
        if state.issued and header == f"Bearer {state.issued[-1]}":
            return httpx.Response(200, json={"models": []})
        return httpx.Response(401, text="Unauthorized")

    return httpx.MockTransport(handler)


def test_sends_token_for_audience_and_reuses_it(token_endpoint: TokenEndpoint) -> None:
    auth = GoogleIdTokenAuth(AUDIENCE, _tokens())
    seen: list[str] = []
    with httpx.Client(transport=_service(token_endpoint, seen), auth=auth) as client:
        assert client.get(AUDIENCE + "api/tags").status_code == 200
        assert client.get(AUDIENCE + "api/tags").status_code == 200
    assert token_endpoint.audiences == [AUDIENCE]
    assert seen == [f"Bearer {token_endpoint.issued[0]}"] * 2


def test_refreshes_once_on_401(token_endpoint: TokenEndpoint) -> None:
    auth = GoogleIdTokenAuth(AUDIENCE, _tokens())
    seen: list[str] = []
    with httpx.Client(transport=_service(token_endpoint, seen), auth=auth) as client:
        assert client.get(AUDIENCE).status_code == 200
        token_endpoint.mint(AUDIENCE)  # the service now only accepts a newer token
        assert client.get(AUDIENCE).status_code == 200
    assert len(token_endpoint.issued) == 3
    assert seen[-1] == f"Bearer {token_endpoint.issued[-1]}"
    assert auth.refresh_count == 2


def test_gives_up_after_one_retry(token_endpoint: TokenEndpoint) -> None:
    def always_401(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401)

    auth = GoogleIdTokenAuth(AUDIENCE, _tokens())
    with httpx.Client(transport=httpx.MockTransport(always_401), auth=auth) as client:
        assert client.get(AUDIENCE).status_code == 401
    assert len(token_endpoint.issued) == 2


def test_refreshes_before_expiry(token_endpoint: TokenEndpoint) -> None:
    token_endpoint.lifetime = 2.0  # margin is capped at half the lifetime: 1 s
    auth = GoogleIdTokenAuth(AUDIENCE, _tokens(), refresh_margin_seconds=300)
    first = auth.get_token()
    assert auth.get_token() == first
    time.sleep(1.1)
    assert auth.get_token() != first
    assert auth.refresh_count == 2


def test_async_concurrent_requests_share_one_fetch(token_endpoint: TokenEndpoint) -> None:
    auth = GoogleIdTokenAuth(AUDIENCE, _tokens())
    seen: list[str] = []

    async def main() -> list[int]:
        async with httpx.AsyncClient(transport=_service(token_endpoint, seen), auth=auth) as c:
            responses = await asyncio.gather(*(c.get(AUDIENCE) for _ in range(20)))
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 20
    assert len(token_endpoint.issued) == 1


def test_threads_share_one_fetch(token_endpoint: TokenEndpoint) -> None:
    auth = GoogleIdTokenAuth(AUDIENCE, _tokens())
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda: tokens.append(auth.get_token())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(tokens)) == 1
    assert len(token_endpoint.issued) == 1


def test_token_never_in_repr_or_error(token_endpoint: TokenEndpoint) -> None:
    auth = GoogleIdTokenAuth(AUDIENCE, _tokens())
    token = auth.get_token()
    assert token not in repr(auth)
    assert token not in str(vars(auth).get("audience"))
    token_endpoint.fail = True
    fresh = GoogleIdTokenAuth(AUDIENCE, _tokens())
    with pytest.raises(IdTokenError, match="Could not fetch a Google ID token") as info:
        fresh.get_token()
    assert token not in str(info.value)


def test_rejects_non_url_audience() -> None:
    with pytest.raises(ValueError, match="audience must be the service's URL"):
        GoogleIdTokenAuth("ollama-gemma", _NoTokens())


def test_works_with_the_official_ollama_client(token_endpoint: TokenEndpoint) -> None:
    import ollama

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {token_endpoint.issued[-1]}":
            return httpx.Response(401, json={"error": "unauthorized"})
        return httpx.Response(200, json={"models": [{"model": "gemma2:9b", "name": "gemma2:9b"}]})

    client = ollama.Client(
        host=AUDIENCE,
        auth=GoogleIdTokenAuth(AUDIENCE, _tokens()),
        transport=httpx.MockTransport(handler),
    )
    assert [m.model for m in client.list().models] == ["gemma2:9b"]
