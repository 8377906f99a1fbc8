"""The batch's Prefect tasks for its I/O steps, and the engine they share. Prompts are sent inside
``process_shard`` (``tasks.batch.dispatch``) — a few shard-level tasks, never one task per prompt
(per-task overhead is ~30 ms on the server)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from typing import Any

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.batch.backends import Backend, OllamaBackend, OpenAIBackend
from tasks.batch.breaker import CircuitBreaker
from tasks.batch.engine import RequestEngine
from tasks.batch.inputs import InputFile, resolve_inputs
from tasks.batch.lanes import Lane
from tasks.batch.ledger import IdLedger
from tasks.batch.limiter import AdaptiveLimiter
from tasks.batch.outputs import OutputScan, retire_superseded_errors, scan_output
from tasks.batch.params import BatchParams, EngineSettings
from tasks.batch.preflight import check_no_overlap, probe_output
from tasks.batch.stores import ObjectInfo, ObjectStore
from tasks.batch.target import Target, lane_limits, lookup_service, url_target
from tasks.batch.target_refs import URL_DEFAULT_SLOTS, TargetRef
from tasks.clients import GoogleCloud, caller_identity, credentials_identity
from tasks.errors import ConfigurationError
from tasks.id_tokens import GoogleIdTokenAuth
from tasks.propagation import wait_for_invoker
from tasks.retries import retry_transient

CONNECT_TIMEOUT_SECONDS = 10.0


@task(
    name="resolve-target",
    retries=3,
    retry_delay_seconds=[1, 2, 4],
    retry_condition_fn=retry_transient,
)
def resolve_target(ref: TargetRef, cloud: GoogleCloud | None, url_slots: int) -> Target:
    """A URL as is (``url_slots`` unless it says ``#slots=N``); a Cloud Run service → its uri,
    max instances and concurrency, read now from Cloud Run."""
    if ref.url is not None:
        return url_target(ref.url, ref.slots or url_slots)
    if cloud is None:
        raise ConfigurationError("a Cloud Run target needs Google Cloud credentials")
    target = lookup_service(cloud, str(ref.region), str(ref.service))
    return replace(target, explicit_slots=ref.slots) if ref.slots else target


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


def build_backend(
    target: Target,
    settings: EngineSettings,
    *,
    model: str,
    max_connections: int,
    id_tokens: GoogleIdTokenAuth | None,
) -> Backend:
    """The backend ``settings.api`` names, for one target (its own connections and audience;
    its read timeout never longer than a Cloud Run service's own request timeout)."""
    timeout, cut = target.request_timeout(settings.request_timeout_seconds)
    if cut:
        get_run_logger().info(cut)
    if settings.api == "openai":
        return OpenAIBackend(
            target.uri + "/v1",
            model,
            api_key=os.environ.get("OPENAI_API_KEY") or "unused",
            timeout=httpx.Timeout(CONNECT_TIMEOUT_SECONDS, read=timeout, write=60.0, pool=timeout),
            auth=id_tokens,
            max_connections=max_connections,
        )
    return OllamaBackend(
        target.uri,
        model,
        connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
        read_timeout_seconds=timeout,
        tokens=id_tokens,
        max_connections=max_connections,
        stream=settings.stream,
    )


def build_engine(
    targets: list[Target],
    settings: EngineSettings,
    *,
    model: str,
    id_tokens: dict[str, GoogleIdTokenAuth],
) -> RequestEngine:
    """One engine for the run: a lane per target (its backend, its share of the in-flight
    requests, its circuit breaker). ``id_tokens``: by target uri, for those that get them."""
    lanes = []
    for target, limit in zip(targets, lane_limits(targets, settings.in_flight), strict=True):
        backend = build_backend(
            target,
            settings,
            model=model,
            max_connections=limit,
            id_tokens=id_tokens.get(target.uri),
        )
        limiter = AdaptiveLimiter(
            limit, concurrency=target.concurrency, max_instances=target.max_instances
        )
        breaker = CircuitBreaker(
            failures=settings.circuit_failures, cooldown_seconds=settings.circuit_cooldown_seconds
        )
        lanes.append(Lane(target.label, backend, limiter, breaker))
    return RequestEngine(
        lanes,
        max_retries=settings.max_retries,
        backoff_initial_seconds=settings.backoff_initial_seconds,
        backoff_max_seconds=settings.backoff_max_seconds,
        # Each lane's backend stops at its own target's timeout; the attempt at the longest.
        attempt_timeout_seconds=max(
            t.request_timeout(settings.request_timeout_seconds)[0] for t in targets
        ),
    )


async def connect_targets(
    params: BatchParams, cloud: GoogleCloud | None
) -> tuple[list[Target], RequestEngine]:
    """Every target resolved (services read from Cloud Run, at once), and the run's engine: ID
    tokens, each for its own target's audience, from the caller's own identity (the one deploy
    granted run.invoker)."""
    refs = params.targets
    url_slots = (params.engine.in_flight if len(refs) == 1 else None) or URL_DEFAULT_SLOTS
    resolved = [asyncio.to_thread(resolve_target, ref, cloud, url_slots) for ref in refs]
    targets = list(await asyncio.gather(*resolved))
    id_tokens: dict[str, GoogleIdTokenAuth] = {}
    if any(params.sends_id_tokens(ref) for ref in refs):
        who = caller_identity(cloud) if cloud else credentials_identity(params.credentials_block)
        id_tokens = {
            target.uri: GoogleIdTokenAuth(target.uri, who.id_tokens)
            for ref, target in zip(refs, targets, strict=True)
            if params.sends_id_tokens(ref)
        }
        # A new invoker binding takes minutes to propagate: wait until each service honours it.
        timeout = params.invoker_propagation_timeout_seconds
        await asyncio.gather(
            *(
                asyncio.to_thread(wait_for_invoker, t.uri, auth, who.member, name, timeout)
                for t in targets
                if (name := _resource_name(t, cloud)) and (auth := id_tokens.get(t.uri)) is not None
            )
        )
    engine = build_engine(targets, params.engine, model=params.model, id_tokens=id_tokens)
    return targets, engine


def _resource_name(target: Target, cloud: GoogleCloud | None) -> str | None:
    """A Cloud Run target's resource name (its label without a project); None for a URL."""
    if not target.service:
        return None
    if cloud is None or not target.region:
        return target.label
    return f"projects/{cloud.project}/locations/{target.region}/services/{target.service}"
