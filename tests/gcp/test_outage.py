"""A service that dies mid-run (`Ingress.set_outage`, `POST /_emulator/outage`): the request in
flight is cut, then new ones get 503 (`unavailable`) or a refused connection (`refused`), and
the service serves again on the same url after `null`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from emulator.gcp.auth import TokenSigner
from emulator.gcp.ingress import Ingress, IngressRules, Target
from emulator.ollama.launcher import running_ollama_server
from tests.gcp.conftest import LocalGcp

BODY = {"model": "gemma2:9b", "prompt": "Why is the sky blue?", "stream": False}


@pytest.fixture
def ingress() -> Iterator[Ingress]:
    env = {"OLLAMA_SIM_SERVICE_SECONDS": "3"}  # long enough to be in flight when cut
    with running_ollama_server(engine="sim", models=["gemma2:9b"], env=env) as backend:
        rules = IngressRules(invoker_iam_disabled=True, max_in_flight=8)
        front = Ingress(TokenSigner.generate().verify_id_token, rules)
        front.route_to((Target("r-1", 100, str(backend.base_url)),))
        front.start()
        try:
            yield front
        finally:
            front.stop()


def _generate(url: str) -> httpx.Response:
    return httpx.post(f"{url}/api/generate", json=BODY, timeout=30)


def test_an_outage_cuts_the_request_in_flight_then_503_or_refused_then_serves_again(
    ingress: Ingress,
) -> None:
    url = ingress.url
    errors: list[BaseException] = []

    def in_flight() -> None:
        try:
            _generate(url)
        except httpx.TransportError as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_flight)
    thread.start()
    deadline = time.monotonic() + 30
    while ingress.in_flight == 0:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    ingress.set_outage("unavailable")
    thread.join(timeout=30)
    assert len(errors) == 1  # the answer never came: the connection was cut
    answer = _generate(url)
    assert answer.status_code == 503 and "Service Unavailable" in answer.text

    ingress.set_outage("refused")
    with pytest.raises(httpx.ConnectError):
        _generate(url)
    assert ingress.url == url  # still known (the emulator's state names it) while refusing

    ingress.set_outage(None)
    assert ingress.url == url
    again = _generate(url)
    assert again.status_code == 200 and again.json()["done"] is True
    with pytest.raises(ValueError, match="outage must be one of"):
        ingress.set_outage("sideways")  # type: ignore[arg-type]


def test_the_control_endpoint_names_what_is_wrong(local_gcp: LocalGcp) -> None:
    endpoint = f"{local_gcp.base_url}/_emulator/outage"
    missing = httpx.post(endpoint, json={"location": "us-central1", "outage": "refused"})
    assert missing.status_code == 400 and "service" in missing.json()["error"]["message"]
    body = {"location": "us-central1", "service": "nope", "outage": "refused"}
    assert httpx.post(endpoint, json=body).status_code == 404
    sideways = httpx.post(endpoint, json={**body, "outage": "sideways"})
    assert sideways.status_code == 400 and "unavailable, refused" in sideways.text
