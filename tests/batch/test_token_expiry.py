"""Token expiry: ID tokens that live 4 s, a batch of ~15+ s against a private Cloud Run service.

The service is deployed on `emulator.gcp` (sim engine, each request holding its slot a while) and
found by name. The client must refresh its ID token ahead of expiry, so the run sees no 401 at
all (not even one rescued by the retry-once-on-401 path) and no auth error record, while several
distinct tokens are used. Tokens are only ever compared by digest, never kept or printed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator.gcp import GcpEmulatorProcess
from flows.batch import BatchParams, batch_inference
from flows.deploy import DeployParameters, deploy
from tasks.id_tokens import GoogleIdTokenAuth
from tests.batch.conftest import INSTANT_SETUP, local, read_output, write_prompts

pytestmark = pytest.mark.slow

TOKEN_LIFETIME_SECONDS = 4
PROMPTS = 150
IN_FLIGHT = 4
SERVICE_SECONDS = 0.45  # 150 / 4 × 0.45 s ≈ 17 s: four or more token lifetimes


@dataclass
class AuthWatch:
    """What the client's token source handed out: digests of the tokens, and 401 refreshes."""

    token_digests: set[str] = field(default_factory=set)
    requests: int = 0
    unauthorized: int = 0


@pytest.fixture
def auth_watch(monkeypatch: pytest.MonkeyPatch) -> AuthWatch:
    watch = AuthWatch()
    get_token, refresh = GoogleIdTokenAuth.aget_token, GoogleIdTokenAuth.arefresh

    async def watched_get(self: GoogleIdTokenAuth) -> str:
        token = await get_token(self)
        watch.token_digests.add(hashlib.sha256(token.encode()).hexdigest())
        watch.requests += 1
        return token

    async def watched_refresh(self: GoogleIdTokenAuth, rejected: str) -> str:
        watch.unauthorized += 1  # only a 401 answer makes the backend call this
        return await refresh(self, rejected)

    monkeypatch.setattr(GoogleIdTokenAuth, "aget_token", watched_get)
    monkeypatch.setattr(GoogleIdTokenAuth, "arefresh", watched_refresh)
    return watch


def _configure(base_url: str, **config: Any) -> None:
    httpx.post(f"{base_url}/_emulator/config", json=config, timeout=30).raise_for_status()


@pytest.fixture
def slow_sim(gcp_emulator: GcpEmulatorProcess, gcp_env: dict[str, str]) -> Iterator[None]:
    """Instances started now hold each request's slot for SERVICE_SECONDS; builds and IAM
    propagation take no time (not what this test is about). Restored after (and by gcp_env)."""
    sim_env = {"OLLAMA_SIM_SERVICE_SECONDS": str(SERVICE_SECONDS)}
    _configure(gcp_emulator.base_url, sim_env=sim_env, **INSTANT_SETUP)
    try:
        yield
    finally:
        _configure(gcp_emulator.base_url, sim_env={}, token_lifetime_seconds=3600)


def test_short_lived_id_tokens_cause_no_auth_failure(
    prefect_api: str,
    gcp_emulator: GcpEmulatorProcess,
    slow_sim: None,
    auth_watch: AuthWatch,
    tmp_path: Path,
) -> None:
    service = f"ollama-{uuid.uuid4().hex[:8]}"
    deployed = deploy(DeployParameters(service=service, run_smoke_test=False))
    assert deployed["uri"]

    _configure(gcp_emulator.base_url, token_lifetime_seconds=TOKEN_LIFETIME_SECONDS)
    ids = write_prompts(tmp_path / "in" / "prompts.jsonl", PROMPTS)
    params = BatchParams(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        target=service,
        in_flight=IN_FLIGHT,
        shard_size=50,
        request_timeout_seconds=30,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.5,
    )
    manifest = asyncio.run(batch_inference(params))

    results, errors = read_output(local(tmp_path / "out"))
    assert sorted(r["id"] for r in results) == ids  # every id once, none twice
    assert all(r["response"] and r["eval_count"] > 0 for r in results)
    assert errors == []
    assert not [e for e in errors if "401" in e["error"] or "auth" in e["error"].lower()]
    assert manifest["counts"] == {"total": PROMPTS, "succeeded": PROMPTS, "failed": 0, "skipped": 0}
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["counts"]["failed"] == 0 and saved["service"]["name"] == service

    # Every request took its token from the ID-token source, which refreshed before expiry: several
    # tokens over the run, and the service never answered 401 (no reactive refresh needed).
    assert auth_watch.requests >= PROMPTS
    assert auth_watch.unauthorized == 0
    assert len(auth_watch.token_digests) >= 3
