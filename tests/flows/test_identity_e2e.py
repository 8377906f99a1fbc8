"""Every credential source runs deploy → smoke test → batch → teardown on emulator.gcp (sim engine),
with Google's eventual consistency as slow as issue 12 asks: `iam_propagation_seconds=120` (the
ingress honours a new invoker binding two minutes after it) and
`service_account_propagation_seconds=20` (Cloud Run refuses a new runtime account with 403 actAs).

The five pipelines run at once, each an `ollama-cloudrun pipeline` subprocess with its own
environment (google-auth reads GOOGLE_APPLICATION_CREDENTIALS and GCE_METADATA_HOST from it), so
the test waits two minutes once, not five times. Each must finish after waiting for both (its log
says so) and as the identity it was given: the invoker the deploy granted (``deploy-<service>``
artifact) is the member whose ID tokens the smoke test and the batch sent (the ingress answers 403
to anyone else). Flows that did not wait would fail on the 403 actAs or the ingress's 403.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest
from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import service_account
from prefect.artifacts import Artifact

from emulator.gcp.auth import admin_email
from emulator.gcp.auth.user_credentials import USER_ADC_ENV, USER_EMAIL
from tasks import clients
from tests.gcp.discovery import Judge
from tests.gcp.test_discovery_conformance import _recorded

pytestmark = pytest.mark.slow

PROMPTS = 3
ROOT = Path(__file__).resolve().parents[2]
IAM_PROPAGATION_SECONDS = 120
SERVICE_ACCOUNT_PROPAGATION_SECONDS = 20
PIPELINE_TIMEOUT_SECONDS = 600


@dataclass
class Source:
    """One credential source: its pipeline's environment, options and expected invoker member."""

    name: str
    member: str
    credentials: str | None  # GOOGLE_APPLICATION_CREDENTIALS; None: the metadata server
    options: list[str] = field(default_factory=list)
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    @property
    def service(self) -> str:
        return f"ollama-{self.name}-{self.suffix}"

    @property
    def account_id(self) -> str:
        return f"rt-{self.name}-{self.suffix}"


def _admin_session(gcp_env: dict[str, str]) -> AuthorizedSession:
    key = service_account.Credentials.from_service_account_file(
        gcp_env["GOOGLE_APPLICATION_CREDENTIALS"], scopes=[clients.CLOUD_PLATFORM_SCOPE]
    )
    return AuthorizedSession(key)


def _impersonated_adc(gcp_env: dict[str, str], tmp_path: Path) -> tuple[Path, str]:
    """What `gcloud auth application-default login --impersonate-service-account SA` writes, for
    an account the user may mint tokens for (Token Creator)."""
    base, project = gcp_env["OLLAMA_CLOUDRUN_API_ENDPOINT"], gcp_env["GOOGLE_CLOUD_PROJECT"]
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
    return adc, target


def _sources(gcp_env: dict[str, str], tmp_path: Path) -> list[Source]:
    from prefect_gcp import GcpCredentials

    project = gcp_env["GOOGLE_CLOUD_PROJECT"]
    key_file, user_adc = gcp_env["GOOGLE_APPLICATION_CREDENTIALS"], gcp_env[USER_ADC_ENV]
    admin = f"serviceAccount:{admin_email(project)}"
    impersonated, target = _impersonated_adc(gcp_env, tmp_path)
    # The block is the only identity: the environment holds another one (the user).
    info = json.loads(Path(key_file).read_text())
    block = f"identity-{uuid.uuid4().hex[:8]}"
    GcpCredentials(service_account_info=info, project=project).save(block)
    return [
        Source("key", admin, key_file),
        Source("user", f"user:{USER_EMAIL}", user_adc),
        Source("imp", f"serviceAccount:{target}", str(impersonated)),
        Source(
            "block",
            f"serviceAccount:{info['client_email']}",
            user_adc,
            ["--credentials-block", block],
        ),
        # No key, no ADC file: google-auth finds the metadata server, whose account reads
        # "default" until the credentials are refreshed (a Cloud Run work-pool job).
        Source("meta", admin, None),
    ]


def _start(
    source: Source, gcp_env: dict[str, str], prefect_api: str, bucket: str, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], Path, IO[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update({k: v for k, v in gcp_env.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"})
    if source.credentials is not None:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = source.credentials
    env["CLOUDSDK_CONFIG"] = str(tmp_path / f"gcloud-{source.name}")  # no gcloud ADC either
    env["PREFECT_API_URL"] = prefect_api
    env["PREFECT_LOGGING_LEVEL"] = "INFO"  # the waiting lines are INFO
    # Five clients at once on the session's SQLite-backed test server, which answers 503 while its
    # database is locked: on a loaded machine, ride that out longer than Prefect's default 5 tries.
    env["PREFECT_CLIENT_MAX_RETRIES"] = "8"
    env["PYTHONPATH"] = str(ROOT)
    args = ["--service", source.service, "--service-account-id", source.account_id]
    # Five services at once: one instance each fits the project's 7 L4 GPUs.
    args += ["--repository", f"repo-{source.name}-{source.suffix}", "--max-instances", "1"]
    args += ["--input", f"gs://{bucket}/prompts/", "--output", f"gs://{bucket}/{source.name}/"]
    log_path = tmp_path / f"{source.name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "flows", "pipeline", *args, *source.options],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, log_path, log


def _check(source: Source, returncode: int, log: str) -> None:
    assert returncode == 0, f"{source.name}: exit {returncode}\n{log[-4000:]}"
    assert "waiting for the invoker binding to propagate…" in log, source.name
    waited_for_account = f"waiting for the service account {source.account_id}@"
    assert waited_for_account in log, source.name
    deploy = Artifact.get(f"deploy-{source.service}")
    assert deploy is not None
    markdown = str(deploy.data)
    assert f"granted to {source.member}" in markdown, source.name
    assert "sample answer" in markdown  # the smoke test passed with this identity's ID token
    assert "invoker propagation (s): " in markdown, source.name  # and says how long it waited
    summary = Artifact.get(f"pipeline-{source.service}")
    assert summary is not None
    assert f"| prompts | total {PROMPTS}, succeeded {PROMPTS}," in str(summary.data), source.name
    assert "| teardown | done |" in str(summary.data), source.name


def test_every_credential_source_waits_out_google_propagation(
    gcp_env: dict[str, str], prefect_api: str, tmp_path: Path
) -> None:
    base = gcp_env["OLLAMA_CLOUDRUN_API_ENDPOINT"]
    httpx.post(
        f"{base}/_emulator/config",
        json={
            "iam_propagation_seconds": IAM_PROPAGATION_SECONDS,
            "service_account_propagation_seconds": SERVICE_ACCOUNT_PROPAGATION_SECONDS,
        },
        timeout=30,
    ).raise_for_status()  # gcp_env restores the defaults afterwards
    httpx.delete(f"{base}/_emulator/requests", timeout=30).raise_for_status()
    bucket = clients.storage_client(clients.resolve_cloud()).create_bucket(
        f"prompts-{uuid.uuid4().hex[:8]}"
    )
    lines = [json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) for i in range(PROMPTS)]
    bucket.blob("prompts/a.jsonl").upload_from_string("\n".join(lines) + "\n")
    sources = _sources(gcp_env, tmp_path)

    started = time.monotonic()
    runs = [(s, *_start(s, gcp_env, prefect_api, bucket.name, tmp_path)) for s in sources]
    results: dict[str, tuple[int, str]] = {}
    try:
        for source, process, log_path, log in runs:
            left = max(1.0, started + PIPELINE_TIMEOUT_SECONDS - time.monotonic())
            try:
                process.wait(timeout=left)
            finally:
                log.close()
            results[source.name] = (process.returncode, log_path.read_text(errors="replace"))
    finally:
        for _, process, _, _ in runs:
            if process.poll() is None:
                process.kill()
                process.wait()
    for source in sources:
        _check(source, *results[source.name])

    # Every exchange of the five runs judged by Google's discovery documents: IAM v1 policies and
    # IAM Credentials (impersonation), and the 403 actAs errors the deploys waited out.
    recorded = _recorded(base)
    paths = " ".join(e.path for e in recorded)
    for verb in (":setIamPolicy", ":generateAccessToken", ":generateIdToken"):
        assert verb in paths, verb
    refused = [e for e in recorded if e.status == 403 and e.path.endswith("/services")]
    assert refused
    assert all("iam.serviceaccounts.actAs" in json.dumps(e.response_body) for e in refused)
    judge = Judge()
    violations = [v for exchange in recorded for v in judge.violations(exchange)]
    assert violations == [], "\n".join(violations[:40])
