"""The deployed Ollama service, through the official ``ollama`` client with a Google ID token.

Never through ``ollama``'s module-level helpers (they read OLLAMA_HOST at import): always a
``Client(host=uri, auth=GoogleIdTokenAuth(uri, tokens))`` made here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial

import httpx
import ollama
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.errors import InvokerRefusedError, SmokeTestError
from tasks.propagation import through_invoker_propagation

REQUEST_TIMEOUT_SECONDS = 600.0
# Retried while the first instance starts (Cloud Run answers 429/503 until one is up).
_STARTING_STATUSES = {429, 502, 503, 504}


@dataclass(frozen=True)
class TagsProbe:
    models: list[str]
    seconds: float  # from the first request let through until /api/tags answered (cold start)
    attempts: int
    invoker_wait_seconds: float = 0.0  # refused (403) before that: a new invoker binding


@dataclass(frozen=True)
class GenerateSample:
    text: str
    first_token_seconds: float
    total_seconds: float
    eval_count: int
    done_reason: str


def ollama_client(
    uri: str, auth: httpx.Auth | None, timeout: float = REQUEST_TIMEOUT_SECONDS
) -> ollama.Client:
    return ollama.Client(host=uri, auth=auth, timeout=timeout)


# A private Cloud Run service answers a request without a token with 403 ("Your client does not
# have permission to get URL ... from this server."); 401 is for a token that fails verification,
# and a front end before the service (IAP, a load balancer) may say 401 to a missing one. Either
# is a refusal. Any other answer (200, 404, 429, 5xx) means the request got past the invoker check.
REFUSED_STATUSES = frozenset({401, 403})


def unauthenticated_status(uri: str, timeout: float = 30.0) -> int:
    """The HTTP status of ``GET /api/tags`` sent without any token (a private service says 403)."""
    with httpx.Client(timeout=timeout) as client:
        return client.get(f"{uri.rstrip('/')}/api/tags").status_code


def require_private(uri: str) -> int:
    """The status that refused a request without a token; ``SmokeTestError`` when it was not
    refused (the service serves unauthenticated requests)."""
    status = unauthenticated_status(uri)
    if status not in REFUSED_STATUSES:
        raise SmokeTestError(
            f"{uri} answered {status} to a request without a token instead of refusing it "
            "(401 or 403): the service is public (allUsers holds roles/run.invoker, or the "
            "invoker IAM check is disabled)"
        )
    return status


@task(name="list-models", cache_policy=NO_CACHE)
def list_models(
    uri: str,
    auth: httpx.Auth | None,
    deadline_seconds: float = 300.0,
    *,
    member: str,
    service: str,
    invoker_timeout_seconds: float,
) -> TagsProbe:
    """List the models, retrying while the service is still starting; time it (cold start).

    The caller's first request: a 403 to ``member``'s ID token is waited out for
    ``invoker_timeout_seconds`` first (a new run.invoker binding propagating:
    ``tasks.propagation``, in this task, so that the retries fail no task run inside deploy's
    transaction); ``TagsProbe.invoker_wait_seconds`` says how long it was refused."""
    probe, waited = through_invoker_propagation(
        partial(_list_models, uri, auth, deadline_seconds),
        uri,
        member,
        service,
        invoker_timeout_seconds,
    )
    return replace(probe, invoker_wait_seconds=waited)


def _list_models(uri: str, auth: httpx.Auth | None, deadline_seconds: float) -> TagsProbe:
    """``list_models`` once past the invoker check; a 403 raises ``InvokerRefusedError``."""
    client = ollama_client(uri, auth)
    started = time.monotonic()
    attempts = 0
    delay = 0.5
    while True:
        attempts += 1
        try:
            listed = client.list()
            return TagsProbe(
                models=[m.model or "" for m in listed.models],
                seconds=time.monotonic() - started,
                attempts=attempts,
            )
        except ollama.ResponseError as exc:
            if exc.status_code == 403:
                raise InvokerRefusedError(f"GET {uri}/api/tags answered 403: {exc.error}") from exc
            if exc.status_code not in _STARTING_STATUSES:
                raise SmokeTestError(
                    f"GET /api/tags answered {exc.status_code}: {exc.error}"
                ) from exc
            last: Exception = exc
        # ollama's client turns httpx's ConnectError into the builtin ConnectionError.
        except (
            ConnectionError,
            httpx.ConnectError,
            httpx.RemoteProtocolError,
            httpx.ReadTimeout,
        ) as exc:
            last = exc
        if time.monotonic() - started + delay > deadline_seconds:
            raise SmokeTestError(
                f"{uri} did not answer /api/tags within {deadline_seconds:.0f} s: "
                f"{type(last).__name__}"
            ) from last
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


@task(name="generate-sample", cache_policy=NO_CACHE)
def generate_sample(
    uri: str, auth: httpx.Auth, model: str, prompt: str, num_predict: int = 32
) -> GenerateSample:
    """One short streamed generation; first-token latency is the time to the first text chunk."""
    client = ollama_client(uri, auth)
    started = time.monotonic()
    first: float | None = None
    parts: list[str] = []
    eval_count, done_reason = 0, ""
    try:
        for chunk in client.generate(
            model=model, prompt=prompt, stream=True, options={"num_predict": num_predict}
        ):
            if chunk.response and first is None:
                first = time.monotonic() - started
            parts.append(chunk.response or "")
            if chunk.done:
                eval_count = chunk.eval_count or 0
                done_reason = chunk.done_reason or ""
    except ollama.ResponseError as exc:
        raise SmokeTestError(
            f"/api/generate with {model} failed ({exc.status_code}): {exc.error}"
        ) from exc
    total = time.monotonic() - started
    text = "".join(parts)
    if not text.strip():
        raise SmokeTestError(f"/api/generate with {model} returned no text")
    return GenerateSample(
        text, first if first is not None else total, total, eval_count, done_reason
    )


@task(name="check-private", cache_policy=NO_CACHE)
def check_private(uri: str) -> int:
    status = require_private(uri)
    get_run_logger().info("A request without a token was refused with %d", status)
    return status
