"""Google's eventual consistency in the emulator, through the official clients: Cloud Run refuses
a runtime service account younger than `service_account_propagation_seconds` (Google's 403
actAs), and a service's ingress honours a new run.invoker member only `iam_propagation_seconds`
after the binding."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.auth.transport.requests import AuthorizedSession
from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from emulator.gcp.cloud_run.propagation import ACT_AS_DENIED
from tests.gcp.conftest import PROJECT, LocalGcp
from tests.gcp.test_cloud_run import (  # noqa: F401  (fixtures)
    RunEnv,
    gpu_service,
    parent,
    run_env,
    run_server,
    sid,
)

LOCATION = "us-central1"
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


def _configure(gcp: LocalGcp, **settings: float) -> None:
    httpx.post(f"{gcp.base_url}/_emulator/config", json=settings, timeout=30).raise_for_status()


def _service(account: str) -> run_v2.Service:
    image = f"{LOCATION}-docker.pkg.dev/{PROJECT}/ollama/ollama-gemma:v1"
    return run_v2.Service(
        template=run_v2.RevisionTemplate(
            service_account=account,
            scaling=run_v2.RevisionScaling(max_instance_count=1),
            node_selector=run_v2.NodeSelector(accelerator="nvidia-l4"),
            gpu_zonal_redundancy_disabled=True,
            containers=[
                run_v2.Container(
                    image=image,
                    resources=run_v2.ResourceRequirements(
                        limits={"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
                    ),
                )
            ],
        )
    )


def _create_account(gcp: LocalGcp, account_id: str) -> str:
    session = AuthorizedSession(gcp.credentials())
    response = session.post(
        f"{gcp.base_url}/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": account_id}
    )
    response.raise_for_status()
    return str(response.json()["email"])


def test_a_new_service_account_gets_googles_403_act_as(local_gcp: LocalGcp) -> None:
    local_gcp.enable("run.googleapis.com", "iam.googleapis.com")
    _configure(local_gcp, service_account_propagation_seconds=3600)
    client = local_gcp.client(run_v2.ServicesClient)
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    email = _create_account(local_gcp, f"run-{uuid.uuid4().hex[:8]}")
    missing = f"absent-{uuid.uuid4().hex[:6]}@{PROJECT}.iam.gserviceaccount.com"
    for account in (email, missing):
        with pytest.raises(gexc.Forbidden) as info:
            client.create_service(parent=parent, service=_service(account), service_id="svc-a")
        assert info.value.message.endswith(": " + ACT_AS_DENIED.format(account=account))
        assert ACT_AS_DENIED.format(account=account) == (
            f"Permission 'iam.serviceaccounts.actAs' denied on service account {account} "
            "(or it may not exist)."
        )
    # Another project's account and the default compute account are not the emulator's to judge.
    other = "robot@elsewhere.iam.gserviceaccount.com"
    client.create_service(parent=parent, service=_service(other), service_id="svc-b")

    _configure(local_gcp, service_account_propagation_seconds=0.5)
    time.sleep(0.6)
    client.create_service(parent=parent, service=_service(email), service_id="svc-c")
    with pytest.raises(gexc.Forbidden, match=r"iam\.serviceaccounts\.actAs"):
        client.create_service(parent=parent, service=_service(missing), service_id="svc-d")


def test_a_new_invoker_is_honoured_only_after_iam_propagation(local_gcp: LocalGcp) -> None:
    local_gcp.enable("run.googleapis.com")
    _configure(local_gcp, iam_propagation_seconds=3600)
    client = local_gcp.client(run_v2.ServicesClient)
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    name = client.create_service(
        parent=parent, service=_service(""), service_id="svc-iam"
    ).metadata.name
    record = local_gcp.emulator.cloud_run._services[(PROJECT, LOCATION, "svc-iam")]
    assert record.ingress is not None

    def set_invokers(*members: str) -> None:
        policy = client.get_iam_policy(request={"resource": name})
        del policy.bindings[:]
        policy.bindings.append(policy_pb2.Binding(role="roles/run.invoker", members=members))
        client.set_iam_policy(request={"resource": name, "policy": policy})

    early = "user:early@example.com"
    set_invokers(early)
    rules = record.ingress.rules
    assert rules.members == {early} and rules.honoured_members() == frozenset()
    assert rules.honoured_from[early] == pytest.approx(time.time() + 3600, abs=30)

    _configure(local_gcp, iam_propagation_seconds=0)
    late = "user:late@example.com"
    set_invokers(early, late)  # the earlier grant keeps its own clock
    assert record.ingress.rules.honoured_members() == {late}
    set_invokers(late)
    assert early not in record.ingress.rules.honoured_from

    # The config endpoint takes both settings and refuses a negative one.
    response = httpx.post(
        f"{local_gcp.base_url}/_emulator/config", json={"iam_propagation_seconds": -1}, timeout=30
    )
    assert response.status_code == 400


def test_every_url_of_a_service_waits_for_the_binding_by_the_emulators_clock(
    run_env: RunEnv,  # noqa: F811
) -> None:
    """The service URL and a tag URL made after the grant both answer 403 until the binding has
    propagated; `clock_offset_seconds` moves that time as it moves every other emulator time."""
    emulator = run_env.emulator
    emulator.config = emulator.config.model_copy(update={"iam_propagation_seconds": 600})
    client = run_env.client()
    service_id = sid()
    svc = client.create_service(
        parent=parent(), service=gpu_service(max_instances=2), service_id=service_id
    ).result(timeout=120)
    policy = client.get_iam_policy(request={"resource": svc.name})
    policy.bindings.add(role="roles/run.invoker", members=[f"serviceAccount:{run_env.email}"])
    client.set_iam_policy(request={"resource": svc.name, "policy": policy})
    headers = {"Authorization": f"Bearer {run_env.id_token(svc.uri)}"}
    assert httpx.get(f"{svc.uri}/api/tags", headers=headers).status_code == 403

    candidate = f"{service_id}-candidate"
    svc.template.revision = candidate
    svc.template.containers[0].env.append(run_v2.EnvVar(name="X", value="1"))
    svc.traffic = [
        run_v2.TrafficTarget(type_=REVISION, revision=svc.latest_ready_revision, percent=100),
        run_v2.TrafficTarget(type_=REVISION, revision=candidate, percent=0, tag="candidate"),
    ]
    tagged = client.update_service(service=svc).result(timeout=120)
    tag_url = next(s.uri for s in tagged.traffic_statuses if s.tag == "candidate")
    assert tag_url and tag_url != svc.uri
    assert httpx.get(f"{tag_url}/api/tags", headers=headers).status_code == 403

    emulator.config = emulator.config.model_copy(update={"clock_offset_seconds": 601})
    for url in (svc.uri, tag_url):
        assert httpx.get(f"{url}/api/tags", headers=headers).status_code == 200
    assert httpx.get(f"{tag_url}/api/tags").status_code == 403  # still private
