"""Every credential source runs deploy → smoke test → batch → teardown on emulator.gcp (sim engine).

One pipeline per source, each checked for the identity it used: the invoker the deploy granted
(``deploy-<service>`` artifact) is the member whose ID tokens the smoke test and the batch sent (the
ingress answers 403 to anyone else). The metadata-server run is a subprocess (``ollama-cloudrun``
CLI): google-auth reads ``GCE_METADATA_HOST`` at import.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import service_account
from prefect.artifacts import Artifact

from emulator.gcp.auth import admin_email
from emulator.gcp.auth.user_credentials import USER_ADC_ENV, USER_EMAIL
from flows.pipeline import PipelineParameters, pipeline
from tasks import clients
from tests.gcp.discovery import Judge
from tests.gcp.test_discovery_conformance import _recorded

pytestmark = pytest.mark.slow

PROMPTS = 3
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(gcp_env: dict[str, str], prefect_api: str) -> Iterator[dict[str, str]]:
    """Fresh service id and a prompts bucket (made with the key file's credentials)."""
    service = f"ollama-{uuid.uuid4().hex[:8]}"
    cloud = clients.resolve_cloud()
    bucket = clients.storage_client(cloud).create_bucket(f"prompts-{uuid.uuid4().hex[:8]}")
    lines = [json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) for i in range(PROMPTS)]
    bucket.blob("prompts/a.jsonl").upload_from_string("\n".join(lines) + "\n")
    yield {
        "service": service,
        "input": f"gs://{bucket.name}/prompts/",
        "output": f"gs://{bucket.name}/results/",
    }


def _assert_ran_as(run: dict[str, str], result: dict[str, Any] | None, member: str) -> None:
    if result is not None:
        counts = result["batch"]["counts"]
        assert (counts["total"], counts["succeeded"]) == (PROMPTS, PROMPTS)
        assert result["teardown"] == "done"
    artifact = Artifact.get(f"deploy-{run['service']}")
    assert artifact is not None
    markdown = str(artifact.data)
    assert f"granted to {member}" in markdown
    assert "sample answer" in markdown  # the smoke test passed with this identity's ID token


def _pipeline(run: dict[str, str], **extra: Any) -> dict[str, Any]:
    params = PipelineParameters.model_validate({**run, **extra})
    result: dict[str, Any] = asyncio.run(pipeline(params))
    return result


def _admin_session(gcp_env: dict[str, str]) -> AuthorizedSession:
    key = service_account.Credentials.from_service_account_file(
        gcp_env["GOOGLE_APPLICATION_CREDENTIALS"], scopes=[clients.CLOUD_PLATFORM_SCOPE]
    )
    return AuthorizedSession(key)


def test_service_account_key(gcp_env: dict[str, str], run: dict[str, str]) -> None:
    result = _pipeline(run)
    _assert_ran_as(run, result, f"serviceAccount:{admin_email(gcp_env['GOOGLE_CLOUD_PROJECT'])}")


def test_user_adc_from_gcloud_login(
    gcp_env: dict[str, str], run: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", gcp_env[USER_ADC_ENV])
    result = _pipeline(run)
    _assert_ran_as(run, result, f"user:{USER_EMAIL}")


def test_impersonated_service_account_adc(
    gcp_env: dict[str, str], run: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What `gcloud auth application-default login --impersonate-service-account SA` writes."""
    base, project = gcp_env["OLLAMA_CLOUDRUN_API_ENDPOINT"], gcp_env["GOOGLE_CLOUD_PROJECT"]
    httpx.delete(f"{base}/_emulator/requests", timeout=30).raise_for_status()
    admin = _admin_session(gcp_env)
    admin.post(
        f"{base}/v1/projects/{project}/services:batchEnable",
        json={"serviceIds": ["iam.googleapis.com", "iamcredentials.googleapis.com"]},
    ).raise_for_status()
    created = admin.post(
        f"{base}/v1/projects/{project}/serviceAccounts", json={"accountId": "deployer"}
    )
    created.raise_for_status()
    target = created.json()["email"]
    account = f"{base}/v1/projects/{project}/serviceAccounts/{target}"
    grant = {"role": "roles/iam.serviceAccountTokenCreator", "members": [f"user:{USER_EMAIL}"]}
    admin.post(f"{account}:setIamPolicy", json={"policy": {"bindings": [grant]}}).raise_for_status()
    adc = tmp_path / "impersonated-adc.json"
    adc.write_text(
        json.dumps(
            {
                "type": "impersonated_service_account",
                "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/"
                f"projects/-/serviceAccounts/{target}:generateAccessToken",
                "delegates": [],
                "source_credentials": json.loads(Path(gcp_env[USER_ADC_ENV]).read_text()),
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    result = _pipeline(run)
    _assert_ran_as(run, result, f"serviceAccount:{target}")

    # IAM v1 policies and IAM Credentials, as the run used them, judged by Google's documents.
    recorded = _recorded(base)
    paths = " ".join(e.path for e in recorded)
    for verb in (":setIamPolicy", ":generateAccessToken", ":generateIdToken"):
        assert verb in paths, verb
    judge = Judge()
    violations = [v for exchange in recorded for v in judge.violations(exchange)]
    assert violations == [], "\n".join(violations[:40])


def test_gcp_credentials_block_is_the_only_identity(
    gcp_env: dict[str, str], run: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment is another identity (the user): everything must come from the block."""
    from prefect_gcp import GcpCredentials

    info = json.loads(Path(gcp_env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
    name = f"identity-{uuid.uuid4().hex[:8]}"
    GcpCredentials(service_account_info=info, project=gcp_env["GOOGLE_CLOUD_PROJECT"]).save(name)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", gcp_env[USER_ADC_ENV])
    result = _pipeline(run, credentials_block=name)
    _assert_ran_as(run, result, f"serviceAccount:{info['client_email']}")


def test_metadata_server_on_a_cloud_run_work_pool(
    gcp_env: dict[str, str], run: dict[str, str], prefect_api: str, tmp_path: Path
) -> None:
    """No key, no ADC file: google-auth finds the metadata server, whose account reads "default"
    until the credentials are refreshed."""
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update({k: v for k, v in gcp_env.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"})
    env["CLOUDSDK_CONFIG"] = str(tmp_path)  # no gcloud ADC file either
    env["PREFECT_API_URL"] = prefect_api
    env["PYTHONPATH"] = str(ROOT)
    args = ["pipeline", "--service", run["service"], "--input", run["input"]]
    out = subprocess.run(
        [sys.executable, "-m", "flows", *args, "--output", run["output"]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    _assert_ran_as(run, None, f"serviceAccount:{admin_email(gcp_env['GOOGLE_CLOUD_PROJECT'])}")
