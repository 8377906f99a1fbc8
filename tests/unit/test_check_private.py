"""The smoke test's private check: a refusal (401 or 403) passes, anything the service serves fails.
And its first request with the caller's token: a 403 there is the invoker's refusal (waited out
while a new binding propagates), any other error a failed smoke test.

A local HTTP server answers ``GET /api/tags`` with a chosen status and records whether the request
carried any credentials.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.errors import AccessDeniedError, InvokerRefusedError, SmokeTestError
from tasks.ollama import list_models, require_private

MEMBER = "user:ada@example.com"


class _Service(ThreadingHTTPServer):
    status = 200
    seen_headers: tuple[str, ...] = ()


class _Handler(BaseHTTPRequestHandler):
    server: _Service

    def do_GET(self) -> None:
        self.server.seen_headers = tuple(k.lower() for k in self.headers)
        body = b"<h1>Error</h1>" if self.server.status >= 400 else b'{"models": []}'
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def service() -> Iterator[_Service]:
    server = _Service(("127.0.0.1", 0), _Handler)
    # shutdown() waits for serve_forever's next poll: 0.05 s, not its 0.5 s default
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _uri(service: _Service) -> str:
    return f"http://127.0.0.1:{service.server_address[1]}"


@pytest.mark.parametrize("status", [403, 401])
def test_a_refusal_passes(service: _Service, status: int) -> None:
    service.status = status
    assert require_private(_uri(service)) == status
    assert "authorization" not in service.seen_headers
    assert "x-serverless-authorization" not in service.seen_headers


@pytest.mark.parametrize("status", [200, 204, 404, 429, 500, 503])
def test_anything_served_fails(service: _Service, status: int) -> None:
    """Past the invoker check (a public service, even one that errs or is starting): not private."""
    service.status = status
    with pytest.raises(SmokeTestError, match=f"answered {status} to a request without a token"):
        require_private(_uri(service))


def _list_models(service: _Service) -> object:
    return list_models.fn(
        _uri(service), None, 5, member=MEMBER, service="svc", invoker_timeout_seconds=0
    )


def test_a_403_to_the_callers_token_is_the_invokers_refusal(service: _Service) -> None:
    """Past the invoker wait (none here), the error names the member and the role."""
    service.status = 403
    with pytest.raises(AccessDeniedError, match=f"{MEMBER} needs roles/run.invoker") as info:
        _list_models(service)
    assert isinstance(info.value.__cause__, InvokerRefusedError)


def test_another_error_fails_the_smoke_test(service: _Service) -> None:
    service.status = 404
    with pytest.raises(SmokeTestError, match="answered 404"):
        _list_models(service)
