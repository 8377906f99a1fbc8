"""The batch's Prefect tasks for its I/O steps, and the engine they share. Prompts are sent inside
``process_shard`` (``tasks.batch.dispatch``) — a few shard-level tasks, never one task per prompt
(per-task overhead is ~30 ms on the server)."""

from __future__ import annotations

import os
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.batch.backends import Backend, OllamaBackend, OpenAIBackend
from tasks.batch.engine import AdaptiveLimiter, RequestEngine
from tasks.batch.inputs import InputFile, resolve_inputs
from tasks.batch.ledger import IdLedger
from tasks.batch.outputs import OutputScan, retire_superseded_errors, scan_output
from tasks.batch.params import EngineSettings, is_url
from tasks.batch.preflight import check_no_overlap, probe_output
from tasks.batch.stores import ObjectInfo, ObjectStore
from tasks.batch.target import Target, lookup_service, url_target
from tasks.clients import GoogleCloud
from tasks.errors import ConfigurationError
from tasks.id_tokens import GoogleIdTokenAuth
from tasks.retries import retry_transient

CONNECT_TIMEOUT_SECONDS = 10.0


@task(
    name="resolve-target",
    retries=3,
    retry_delay_seconds=[1, 2, 4],
    retry_condition_fn=retry_transient,
)
def resolve_target(
    target: str, cloud: GoogleCloud | None, region: str, default_concurrency: int
) -> Target:
    """A URL as is; a Cloud Run service name → its uri, max instances and concurrency."""
    if is_url(target):
        return url_target(target, default_concurrency)
    if cloud is None:
        raise ConfigurationError("a Cloud Run target needs Google Cloud credentials")
    return lookup_service(cloud, region, target)


@task(
    name="check-output",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
)
def check_output(input_spec: str, store: ObjectStore, run_token: str) -> None:
    """Before any prompt: the output does not overlap the input, and objects can be created
    (and deleted) under it — so an unusable output costs no inference."""
    check_no_overlap(input_spec, store.base_uri)
    probe_output(store, run_token)


@task(
    name="list-inputs",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
)
def list_inputs(spec: str, storage_client: Any, exclude: str) -> list[InputFile]:
    return resolve_inputs(spec, storage_client, exclude=exclude)


@task(
    name="scan-output",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
)
def scan_existing_output(store: ObjectStore, ledger: IdLedger) -> OutputScan:
    """Read what earlier runs wrote, so this run skips it (exactly once, resumable)."""
    return scan_output(store, ledger)


@task(
    name="retire-superseded-errors",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
)
def retire_errors(
    store: ObjectStore, prior_error_shards: list[ObjectInfo], ledger: IdLedger
) -> list[str]:
    return retire_superseded_errors(store, prior_error_shards, ledger)


def build_engine(
    target: Target,
    settings: EngineSettings,
    *,
    model: str,
    in_flight: int,
    id_tokens: GoogleIdTokenAuth | None,
) -> RequestEngine:
    """One engine for the run: the backend ``settings.api`` names, behind the adaptive limit."""
    backend: Backend
    timeout = settings.request_timeout_seconds
    if settings.api == "openai":
        backend = OpenAIBackend(
            target.uri + "/v1",
            model,
            api_key=os.environ.get("OPENAI_API_KEY") or "unused",
            timeout=httpx.Timeout(CONNECT_TIMEOUT_SECONDS, read=timeout, write=60.0, pool=timeout),
            auth=id_tokens,
            max_connections=in_flight,
        )
    else:
        backend = OllamaBackend(
            target.uri,
            model,
            connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
            read_timeout_seconds=timeout,
            tokens=id_tokens,
            max_connections=in_flight,
            stream=settings.stream,
        )
    limiter = AdaptiveLimiter(
        in_flight, concurrency=target.concurrency, max_instances=target.max_instances
    )
    return RequestEngine(
        backend,
        limiter,
        max_retries=settings.max_retries,
        backoff_initial_seconds=settings.backoff_initial_seconds,
        backoff_max_seconds=settings.backoff_max_seconds,
        attempt_timeout_seconds=timeout,
    )
