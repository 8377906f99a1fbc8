"""Cloud Run Admin v2 through the official `run_v2` REST client against an in-process emulator:
validation errors (class + message), the GPU quota, generations and revisions, IAM policy, and a
service that is really served through its ingress (ID tokens, run.invoker, 429), then deleted."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import uvicorn
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.oauth2 import service_account
from google.protobuf import duration_pb2

from emulator.gcp import cloud_run
from emulator.gcp.app import api_routes, backend_factories, create_app
from emulator.gcp.auth import TokenSigner
from emulator.gcp.config import EmulatorConfig
from emulator.gcp.registry import Emulator
from tasks import ollama as ollama_tasks
from tasks.errors import SmokeTestError

PROJECT = "run-project"
LOCATION = "us-central1"
REPO = "ollama"
IMAGE = f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPO}/ollama-gemma"
DIGEST = "sha256:" + "ab" * 32
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


@dataclass
class RunEnv:
    emulator: Emulator
    base_url: str
    key_info: dict[str, str]

    @property
    def email(self) -> str:
        return self.key_info["client_email"]

    def client(self) -> run_v2.ServicesClient:
        creds = service_account.Credentials.from_service_account_info(self.key_info, scopes=SCOPES)
        return run_v2.ServicesClient(
            credentials=creds,
            transport="rest",
            client_options=ClientOptions(api_endpoint=self.base_url),
        )

    def id_token(self, audience: str, email: str | None = None, lifetime: int = 300) -> str:
        return self.emulator.signer.mint_id_token(email or self.email, audience, lifetime)


@pytest.fixture(scope="module")
def run_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunEnv]:
    state_dir: Path = tmp_path_factory.mktemp("cloud-run")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # IAM propagation has its own tests (test_propagation.py); here a binding counts at once.
    config = EmulatorConfig(
        project=PROJECT, port=port, state_dir=state_dir, gpu_quota=7, iam_propagation_seconds=0
    )
    factories = {**backend_factories(), "cloud_run": cloud_run.CloudRunBackend}
    emulator = Emulator(config, TokenSigner.generate(), factories)
    routes = [r for r in api_routes(emulator) if "/services" not in r.template]
    routes += cloud_run.routes(emulator)
    routes.sort(key=lambda r: r.verb is None)
    app = create_app(emulator, routes)
    base = f"http://127.0.0.1:{port}"
    info = emulator.signer.service_account_info(PROJECT, f"{base}/token")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield RunEnv(emulator, base, info)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def run_env(run_server: RunEnv) -> Iterator[RunEnv]:
    emu = run_server.emulator
    with emu.lock:
        emu.service_usage.enable(PROJECT, ["run.googleapis.com", "artifactregistry.googleapis.com"])
        from google.cloud import artifactregistry_v1 as ar

        emu.artifact_registry.create_repository(
            PROJECT, LOCATION, REPO, ar.Repository(format_=ar.Repository.Format.DOCKER)
        )
        tags = ["latest", "v1"]
        model = {"model": "gemma2:9b"}
        emu.artifact_registry.push_image(
            PROJECT, LOCATION, REPO, "ollama-gemma", tags, DIGEST, model
        )
    initial = emu.config
    yield run_server
    emu.config = initial
    emu.reset()


def gpu_service(
    image: str = f"{IMAGE}:v1",
    *,
    cpu: str = "8",
    memory: str = "32Gi",
    max_instances: int = 7,
    concurrency: int = 4,
    accelerator: str = "nvidia-l4",
    zonal_redundancy_disabled: bool = True,
    cpu_idle: bool = False,
    parallel: str = "4",
) -> run_v2.Service:
    return run_v2.Service(
        labels={"managed-by": "ollama-cloudrun"},
        template=run_v2.RevisionTemplate(
            max_instance_request_concurrency=concurrency,
            timeout=duration_pb2.Duration(seconds=600),
            scaling=run_v2.RevisionScaling(max_instance_count=max_instances),
            node_selector=run_v2.NodeSelector(accelerator=accelerator),
            gpu_zonal_redundancy_disabled=zonal_redundancy_disabled,
            containers=[
                run_v2.Container(
                    image=image,
                    env=[run_v2.EnvVar(name="OLLAMA_NUM_PARALLEL", value=parallel)],
                    resources=run_v2.ResourceRequirements(
                        limits={"cpu": cpu, "memory": memory, "nvidia.com/gpu": "1"},
                        cpu_idle=cpu_idle,
                    ),
                )
            ],
        ),
    )


def parent(location: str = LOCATION) -> str:
    return f"projects/{PROJECT}/locations/{location}"


def sid() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------
# Validation (400 on the create call, as Google's admission does).


@pytest.mark.parametrize(
    ("overrides", "service_id", "message"),
    [
        ({}, "Bad_Name", "Invalid value specified for service_id"),
        ({}, "1starts-with-digit", "Invalid value specified for service_id"),
        ({}, "x" * 50, "at most 49 characters"),
        ({"cpu": "2"}, None, "GPU services require at least 4 CPU"),
        ({"memory": "8Gi"}, None, "GPU services require at least 16Gi"),
        ({"cpu_idle": True}, None, "CPU to be always allocated"),
        ({"accelerator": "nvidia-t4"}, None, "Supported values: nvidia-l4"),
        ({"concurrency": 1001}, None, "between 1 and 1000"),
        ({"max_instances": 1001}, None, "max_instance_count: must be between 0 and 1000"),
    ],
)
def test_create_rejects_what_google_rejects(
    run_env: RunEnv, overrides: dict[str, Any], service_id: str | None, message: str
) -> None:
    client = run_env.client()
    with pytest.raises(gexc.BadRequest) as info:
        client.create_service(
            parent=parent(), service=gpu_service(**overrides), service_id=service_id or sid()
        )
    assert message in info.value.message


def test_timeout_over_an_hour_is_rejected(run_env: RunEnv) -> None:
    svc = gpu_service()
    svc.template.timeout = duration_pb2.Duration(seconds=3601)
    with pytest.raises(gexc.BadRequest, match=r"template\.timeout: must be between 1s and 3600s"):
        run_env.client().create_service(parent=parent(), service=svc, service_id=sid())


def test_gpu_quota_per_project_region_and_pool(run_env: RunEnv) -> None:
    run_env.emulator.config = run_env.emulator.config.model_copy(update={"gpu_quota": 3})
    client = run_env.client()
    with pytest.raises(gexc.BadRequest) as info:
        client.create_service(parent=parent(), service=gpu_service(), service_id=sid())
    assert info.value.message.endswith(
        "Max instances must be set to 3 or fewer in order to set GPU requirements. To request "
        "quota: g.co/cloudrun/gpu-quota Quota violated: "
        "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion requested: 7 allowed: 3"
    )
    # Within quota it is accepted; the remaining quota then shrinks for the next service.
    client.create_service(
        parent=parent(), service=gpu_service(max_instances=2), service_id=sid()
    ).result(timeout=60)
    with pytest.raises(gexc.BadRequest, match="requested: 2 allowed: 1"):
        client.create_service(
            parent=parent(), service=gpu_service(max_instances=2), service_id=sid()
        )
    # The other pool (zonal redundancy on) and another region are independent.
    with pytest.raises(gexc.BadRequest, match="NvidiaL4GpuAllocPerProjectRegion requested: 4"):
        client.create_service(
            parent=parent(),
            service=gpu_service(max_instances=4, zonal_redundancy_disabled=False),
            service_id=sid(),
        )
    other = client.create_service(
        parent=parent("europe-west1"), service=gpu_service(max_instances=3), service_id=sid()
    ).result(timeout=60)
    assert other.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED


def test_regions_keep_their_own_quota_services_and_ingress(run_env: RunEnv) -> None:
    """Two regions are independent: a GPU quota used up in one blocks nothing in the other; the
    same service id in each is its own service with its own URL, and deleting one leaves the
    other serving. Both pull the one image from the first region's registry."""
    gpu_no_zonal = "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
    body = {"region": LOCATION, "quotas": {gpu_no_zonal: 1}}
    assert httpx.post(f"{run_env.base_url}/_emulator/quotas", json=body).is_success
    client = run_env.client()
    service_id = sid()
    public = policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"])]
    )
    served = {}
    for region in (LOCATION, "europe-west4"):
        svc = client.create_service(
            parent=parent(region), service=gpu_service(max_instances=1), service_id=service_id
        ).result(timeout=120)
        assert svc.name == f"{parent(region)}/services/{service_id}"
        client.set_iam_policy(
            request=iam_policy_pb2.SetIamPolicyRequest(resource=svc.name, policy=public)
        )
        served[region] = svc
    # us-central1's one GPU is taken; europe-west4 (the default quota) still admits more.
    with pytest.raises(gexc.BadRequest, match=f"{gpu_no_zonal} requested: 1 allowed: 0"):
        client.create_service(
            parent=parent(), service=gpu_service(max_instances=1), service_id=sid()
        )
    more = client.create_service(
        parent=parent("europe-west4"), service=gpu_service(max_instances=2), service_id=sid()
    ).result(timeout=120)
    uris = {served[LOCATION].uri, served["europe-west4"].uri, more.uri}
    assert len(uris) == 3
    assert [httpx.get(f"{s.uri}/api/tags").status_code for s in served.values()] == [200, 200]
    assert httpx.get(f"{more.uri}/api/tags").status_code == 403  # private: its own policy
    assert [s.name for s in client.list_services(parent=parent())] == [served[LOCATION].name]
    with pytest.raises(gexc.MethodNotImplemented):  # one location at a time, as on Google
        list(client.list_services(parent=f"projects/{PROJECT}/locations/-"))

    client.delete_service(name=served[LOCATION].name).result(timeout=60)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served[LOCATION].uri}/api/tags")
    assert httpx.get(f"{served['europe-west4'].uri}/api/tags").status_code == 200
    client.delete_service(name=served["europe-west4"].name).result(timeout=60)
    client.delete_service(name=more.name).result(timeout=60)


def test_image_missing_from_registry_fails_the_operation(run_env: RunEnv) -> None:
    client = run_env.client()
    missing = f"{IMAGE}:does-not-exist"
    op = client.create_service(parent=parent(), service=gpu_service(missing), service_id=sid())
    with pytest.raises(gexc.GoogleAPICallError, match=f"Image '{missing}' not found."):
        op.result(timeout=60)
    svc = client.get_service(name=op.metadata.name)
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    assert "not found" in svc.terminal_condition.message


def test_test_iam_permissions_answers_from_the_policy(run_env: RunEnv) -> None:
    """The caller holds what the service's policy grants it plus what it holds on the project
    (the emulated Resource Manager: an owner, less what a test denies); a wildcard is a 400."""
    client = run_env.client()
    op = client.create_service(
        parent=parent(), service=gpu_service(f"{IMAGE}:absent"), service_id=sid()
    )
    name = op.metadata.name
    wanted = ["run.routes.invoke", "run.services.get", "run.services.setIamPolicy"]

    def tested() -> list[str]:
        request = iam_policy_pb2.TestIamPermissionsRequest(resource=name, permissions=wanted)
        return list(client.test_iam_permissions(request=request).permissions)

    def granted(email: str) -> list[str]:
        return run_env.emulator.cloud_run.test_iam_permissions(
            PROJECT, LOCATION, name.rsplit("/", 1)[-1], email, wanted
        )

    assert tested() == wanted  # the project's owner
    run_env.emulator.backend("resource_manager").deny(PROJECT, "*", wanted)
    assert tested() == []
    developer = "dev@run-project.iam.gserviceaccount.com"
    client.set_iam_policy(
        request=iam_policy_pb2.SetIamPolicyRequest(
            resource=name,
            policy=policy_pb2.Policy(
                bindings=[
                    policy_pb2.Binding(
                        role="roles/run.invoker", members=[f"serviceAccount:{run_env.email}"]
                    ),
                    policy_pb2.Binding(
                        role="roles/run.developer", members=[f"serviceAccount:{developer}"]
                    ),
                ]
            ),
        )
    )
    assert tested() == ["run.routes.invoke"]
    assert granted(developer) == ["run.routes.invoke", "run.services.get"]
    with pytest.raises(gexc.BadRequest, match="wildcards"):
        client.test_iam_permissions(
            request=iam_policy_pb2.TestIamPermissionsRequest(resource=name, permissions=["run.*"])
        )


def test_not_found_conflict_and_allow_missing(run_env: RunEnv) -> None:
    client = run_env.client()
    name = f"{parent()}/services/{sid()}"
    with pytest.raises(gexc.NotFound, match="does not exist"):
        client.get_service(name=name)
    svc = gpu_service()
    svc.name = name
    with pytest.raises(gexc.NotFound):
        client.update_service(service=svc).result(timeout=60)
    created = client.update_service(
        request=run_v2.UpdateServiceRequest(service=svc, allow_missing=True)
    ).result(timeout=60)
    assert created.name == name and created.generation == 1
    with pytest.raises(gexc.Conflict, match="already exists"):
        client.create_service(parent=parent(), service=gpu_service(), service_id=name[-12:])


# ---------------------------------------------------------------------------------------------
# Lifecycle: ready → served → IAM → 401/403/429 → update → delete.


@pytest.mark.slow
def test_service_is_served_behind_the_ingress(run_env: RunEnv) -> None:
    # A slow sim backend (about 2 s per answer) so that a stream is still in flight below.
    slow = {"OLLAMA_SIM_TPS": "10", "OLLAMA_SIM_RESPONSE_TOKENS": "20"}
    run_env.emulator.config = run_env.emulator.config.model_copy(update={"sim_env": slow})
    client = run_env.client()
    service_id = sid()
    op = client.create_service(
        parent=parent(), service=gpu_service(max_instances=1, concurrency=1), service_id=service_id
    )
    svc = op.result(timeout=120)
    assert svc.generation == 1 and svc.observed_generation == 1
    assert not svc.reconciling
    assert svc.terminal_condition.type_ == "Ready"
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert svc.latest_ready_revision == svc.latest_created_revision
    assert svc.latest_created_revision.startswith(f"{service_id}-00001-")
    assert len(svc.latest_created_revision) == len(service_id) + 10
    assert svc.creator == run_env.email
    assert svc.uri.startswith("http://127.0.0.1:") and svc.urls == [svc.uri]
    assert svc.labels["managed-by"] == "ollama-cloudrun"
    assert svc.traffic_statuses[0].percent == 100

    # 403 without a token (Cloud Run's "Forbidden" page); 401 with a bad one, one for another
    # audience or an expired one.
    anonymous = httpx.get(f"{svc.uri}/api/tags")
    assert anonymous.status_code == 403
    assert "Your client does not have permission to get URL <code>/api/tags</code>" in (
        anonymous.text
    )
    assert ollama_tasks.require_private(svc.uri) == 403
    bad = {"Authorization": "Bearer not-a-jwt"}
    assert httpx.get(f"{svc.uri}/api/tags", headers=bad).status_code == 401
    wrong_aud = {"Authorization": f"Bearer {run_env.id_token('https://elsewhere.run.app')}"}
    assert httpx.get(f"{svc.uri}/api/tags", headers=wrong_aud).status_code == 401
    expired = {"Authorization": f"Bearer {run_env.id_token(svc.uri, lifetime=-600)}"}
    assert httpx.get(f"{svc.uri}/api/tags", headers=expired).status_code == 401
    # 403 with a valid token that is not a run.invoker member.
    token = run_env.id_token(svc.uri)
    headers = {"Authorization": f"Bearer {token}"}
    denied = httpx.get(f"{svc.uri}/api/tags", headers=headers)
    assert denied.status_code == 403 and "Forbidden" in denied.text

    policy = client.get_iam_policy(request={"resource": svc.name})
    policy.bindings.add(role="roles/run.invoker", members=[f"serviceAccount:{run_env.email}"])
    new = client.set_iam_policy(
        request=iam_policy_pb2.SetIamPolicyRequest(resource=svc.name, policy=policy)
    )
    assert new.etag and new.etag != policy.etag
    assert list(new.bindings[0].members) == [f"serviceAccount:{run_env.email}"]
    stale = policy_pb2.Policy()
    stale.CopyFrom(policy)
    with pytest.raises(gexc.Conflict):
        client.set_iam_policy(
            request=iam_policy_pb2.SetIamPolicyRequest(resource=svc.name, policy=stale)
        )

    # Served: the official ollama client lists the model baked into the image.
    oc = ollama.Client(host=svc.uri, headers=headers)
    assert [m.model for m in oc.list().models] == ["gemma2:9b"]
    other = {"Authorization": f"Bearer {run_env.id_token(svc.uri, 'someone@example.com')}"}
    assert httpx.get(f"{svc.uri}/api/tags", headers=other).status_code == 403

    # 429 once max instances × concurrency (1 × 1) requests are in flight: a stream counts
    # until its last byte.
    with httpx.Client(timeout=60) as http:
        body = {"model": "gemma2:9b", "prompt": "count slowly", "stream": True}
        with http.stream("POST", f"{svc.uri}/api/generate", json=body, headers=headers) as r:
            assert r.status_code == 200
            busy = http.get(f"{svc.uri}/api/tags", headers=headers)
            assert busy.status_code == 429
            assert "no available instance" in busy.text
            lines = list(r.iter_lines())
            assert lines and '"done":true' in lines[-1].replace(" ", "")
        assert http.get(f"{svc.uri}/api/tags", headers=headers).status_code == 200

    # A label-only update: new generation, same revision; a template change: new revision.
    svc.labels["team"] = "ml"
    updated = client.update_service(service=svc).result(timeout=60)
    assert updated.generation == 2 and updated.observed_generation == 2
    assert updated.latest_created_revision == svc.latest_created_revision
    same = client.update_service(service=updated).result(timeout=60)
    assert same.generation == 2
    updated.template.containers[0].env.append(run_v2.EnvVar(name="X", value="1"))
    revised = client.update_service(service=updated).result(timeout=120)
    assert revised.generation == 3
    assert revised.latest_created_revision.startswith(f"{service_id}-00003-")
    assert revised.latest_ready_revision == revised.latest_created_revision
    assert oc.list().models[0].model == "gemma2:9b"

    # Delete stops the backend and frees the ingress port.
    record = run_env.emulator.cloud_run._services[(PROJECT, LOCATION, service_id)]
    process = record.revisions[revised.latest_ready_revision].backend.server.process
    # The first revision no longer serves: its server was stopped (Cloud Run scales it to zero).
    assert record.revisions[svc.latest_created_revision].backend is None
    client.delete_service(name=svc.name).result(timeout=60)
    assert process.poll() is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{svc.uri}/api/tags", headers=headers)
    with pytest.raises(gexc.NotFound):
        client.get_service(name=svc.name)
    with pytest.raises(gexc.NotFound):
        client.delete_service(name=svc.name)


def test_public_service_and_list(run_env: RunEnv) -> None:
    client = run_env.client()
    svc = client.create_service(
        parent=parent(), service=gpu_service(max_instances=1), service_id=sid()
    ).result(timeout=120)
    client.set_iam_policy(
        request=iam_policy_pb2.SetIamPolicyRequest(
            resource=svc.name,
            policy=policy_pb2.Policy(
                bindings=[policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"])]
            ),
        )
    )
    assert httpx.get(f"{svc.uri}/api/tags").status_code == 200
    # The smoke test's check fails on a public service: the request without a token was served.
    with pytest.raises(SmokeTestError, match="answered 200 to a request without a token"):
        ollama_tasks.require_private(svc.uri)
    names = [s.name for s in client.list_services(parent=parent())]
    assert svc.name in names
    client.delete_service(name=svc.name).result(timeout=60)


@pytest.mark.slow
def test_ready_service_is_served_again_after_a_restart(tmp_path: Path) -> None:
    """State saved to the state dir; a new emulator on it restarts the service's backend."""
    from google.cloud import artifactregistry_v1 as ar

    def make() -> Emulator:
        # The restart is the subject, not IAM propagation: the allUsers grant is honoured at once.
        config = EmulatorConfig(project=PROJECT, state_dir=tmp_path, iam_propagation_seconds=0)
        factories = {**backend_factories(), "cloud_run": cloud_run.CloudRunBackend}
        emulator = Emulator(config, TokenSigner.load_or_create(tmp_path), factories)
        emulator.load()
        return emulator

    first = make()
    with first.lock:
        first.service_usage.enable(PROJECT, ["run.googleapis.com"])
        first.artifact_registry.create_repository(
            PROJECT, LOCATION, REPO, ar.Repository(format_=ar.Repository.Format.DOCKER)
        )
        first.artifact_registry.push_image(
            PROJECT, LOCATION, REPO, "ollama-gemma", ["v1"], DIGEST, {"model": "gemma2:9b"}
        )
        body = run_v2.Service.to_dict(gpu_service(max_instances=1))
        op = first.cloud_run.create_service(PROJECT, LOCATION, "restored", body, None)
    deadline = time.monotonic() + 60
    while not first.operations.is_done(op["name"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
        with first.lock:
            first.operations.get_json(op["name"])
    uri = first.cloud_run.get_service(PROJECT, LOCATION, "restored").uri
    first.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{uri}/api/tags")

    second = make()
    try:
        record = second.cloud_run._services[(PROJECT, LOCATION, "restored")]
        revision = record.revisions[record.service.latest_ready_revision]
        while revision.backend is None:
            assert time.monotonic() < deadline + 60
            time.sleep(0.1)
        svc = second.cloud_run.get_service(PROJECT, LOCATION, "restored")
        invoker = policy_pb2.Policy(
            bindings=[policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"])]
        )
        second.cloud_run.set_iam_policy(PROJECT, LOCATION, "restored", invoker)
        tags = httpx.get(f"{svc.uri}/api/tags", timeout=30).json()
        assert [m["name"] for m in tags["models"]] == ["gemma2:9b"]
    finally:
        second.close()
    assert revision.backend is not None and revision.backend.server.process.poll() is not None
