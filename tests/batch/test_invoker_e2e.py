"""The invoker wait before a batch and a smoke test (issue 12, item 3), on emulator.gcp.

A service whose binding for the caller is honoured: the batch sends at once, no wait logged. A
service with no binding for the caller: the 403 is retried up to the deadline (a setting, 1 s
here) and then the batch, like the smoke test, fails with an error naming the member and the role.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import httpx
import pytest
from google.iam.v1 import policy_pb2

from flows.batch import BatchParams, batch_inference
from flows.deploy import DeployParameters, deploy
from flows.parameters import SmokeTestParameters, TeardownParameters
from flows.smoke_test import smoke_test
from flows.teardown import teardown
from tasks import clients
from tasks.errors import AccessDeniedError
from tests.batch.conftest import write_prompts

PROMPTS = 4
WAITING = "waiting for the invoker binding to propagate…"


def _waits(caplog: pytest.LogCaptureFixture) -> int:
    return sum(WAITING in r.getMessage() for r in caplog.records)


def _revoke(name: str, member: str) -> None:
    """Take ``member`` out of the service's run.invoker binding (Cloud Run drops it at once)."""
    client = clients.run_services_client(clients.resolve_cloud())
    policy = client.get_iam_policy(request={"resource": name})
    kept = policy_pb2.Policy(etag=policy.etag)
    for binding in policy.bindings:
        members = [m for m in binding.members if m != member]
        if members:
            kept.bindings.add(role=binding.role, members=members)
    client.set_iam_policy(request={"resource": name, "policy": kept})


def test_a_batch_waits_only_while_refused_and_then_names_member_and_role(
    prefect_api: str, gcp_env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = f"invoker-{uuid.uuid4().hex[:8]}"
    # The service account's propagation is not this test's (gcp_env restores the setting).
    config = {"service_account_propagation_seconds": 0}
    endpoint = gcp_env["OLLAMA_CLOUDRUN_API_ENDPOINT"]
    httpx.post(f"{endpoint}/_emulator/config", json=config, timeout=30).raise_for_status()
    # Its smoke test waits until the new binding is honoured (the emulator's default 3 s).
    deployed = deploy(DeployParameters(service=service, max_instances=1))
    name, member = deployed["service"], deployed["actions"]["invoker"].split(" to ", 1)[1]
    write_prompts(tmp_path / "in" / "prompts.jsonl", PROMPTS)
    params = BatchParams(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target=service)

    with caplog.at_level(logging.INFO, logger="prefect"):
        manifest = asyncio.run(batch_inference(params))
    assert manifest["counts"]["succeeded"] == PROMPTS
    assert _waits(caplog) == 0  # honoured already: the batch did not wait

    _revoke(name, member)
    caplog.clear()
    refused = params.model_copy(
        update={"output": str(tmp_path / "out2"), "invoker_propagation_timeout_seconds": 1}
    )
    with caplog.at_level(logging.INFO, logger="prefect"), pytest.raises(AccessDeniedError) as info:
        asyncio.run(batch_inference(refused))
    assert _waits(caplog) >= 1  # retried, with a log line, up to the deadline
    message = str(info.value)
    assert f"still answers 403 to {member} after " in message
    assert f"{member} needs roles/run.invoker on the Cloud Run service {name}" in message
    assert "invoker_propagation_timeout_seconds" in message
    assert f"add-iam-policy-binding {service} --region=us-central1" in message

    with pytest.raises(AccessDeniedError, match=f"{member} needs roles/run.invoker on the Cloud"):
        smoke_test(SmokeTestParameters(service=service, invoker_propagation_timeout_seconds=1))
    teardown(TeardownParameters(service=service))
