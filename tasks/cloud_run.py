"""Cloud Run Admin v2: the private GPU service, its invoker binding and its readiness.

``build_service`` is the pure translation of ``gcloud beta run deploy`` flags into a
``run_v2.Service``; ``service_fingerprint`` is what a rerun compares so that an unchanged spec is
never sent again (no new revision).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import duration_pb2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.errors import (
    ConfigurationError,
    ServiceNotReadyError,
    quota_error,
    translate_google_error,
)
from tasks.models import MODEL_ANNOTATION, RUN_LABEL, ServiceSpec
from tasks.quotas import is_quota_message
from tasks.retries import consistency_retry, transient_retry

INVOKER_ROLE = "roles/run.invoker"
PUBLIC_MEMBERS = frozenset({"allUsers", "allAuthenticatedUsers"})
OPERATION_TIMEOUT_SECONDS = 1800.0
POLL_INTERVAL_SECONDS = 1.0

Action = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class DeployOutcome:
    """What ``deploy_service`` did; ``previous`` is the spec before an update (for rollback)."""

    action: Action
    name: str
    previous: run_v2.Service | None


def service_name(project: str, region: str, service: str) -> str:
    return run_v2.ServicesClient.service_path(project, region, service)


def build_service(
    spec: ServiceSpec,
    image: str,
    service_account: str,
    labels: dict[str, str],
) -> run_v2.Service:
    """The Service ``gcloud beta run deploy`` builds from the tutorial's flags and ``spec``."""
    limits = {"cpu": str(spec.cpu), "memory": spec.memory}
    if spec.gpu:
        limits["nvidia.com/gpu"] = str(spec.gpu)
    template = run_v2.RevisionTemplate(
        service_account=service_account,
        max_instance_request_concurrency=spec.concurrency,
        timeout=duration_pb2.Duration(seconds=spec.timeout_seconds),
        scaling=run_v2.RevisionScaling(max_instance_count=spec.max_instances),
        containers=[
            run_v2.Container(
                image=image,
                env=[run_v2.EnvVar(name="OLLAMA_NUM_PARALLEL", value=str(spec.num_parallel))],
                ports=[run_v2.ContainerPort(container_port=spec.port)],
                resources=run_v2.ResourceRequirements(
                    limits=limits,
                    cpu_idle=spec.cpu_throttling,
                    startup_cpu_boost=True,
                ),
                startup_probe=run_v2.Probe(
                    tcp_socket=run_v2.TCPSocketAction(port=spec.port),
                    period_seconds=10,
                    timeout_seconds=5,
                    failure_threshold=60,
                ),
            )
        ],
        labels=dict(labels),
    )
    if spec.gpu:
        template.node_selector = run_v2.NodeSelector(accelerator=spec.gpu_type)
        template.gpu_zonal_redundancy_disabled = not spec.gpu_zonal_redundancy
    return run_v2.Service(
        ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL,
        invoker_iam_disabled=False,
        labels=dict(labels),
        annotations={MODEL_ANNOTATION: spec.model},
        template=template,
    )


def service_fingerprint(service: run_v2.Service) -> dict[str, Any]:
    """The user-settable fields this project manages, normalised; the flow-run label excluded."""

    def user_keys(values: Any) -> dict[str, str]:
        # Google's own keys (``run.googleapis.com/...``) and the flow-run label are not our spec.
        return {k: v for k, v in dict(values).items() if k != RUN_LABEL and "/" not in k}

    template = service.template
    containers = []
    for c in template.containers:
        containers.append(
            {
                "image": c.image,
                "env": sorted((e.name, e.value) for e in c.env),
                "ports": [p.container_port for p in c.ports],
                "limits": dict(c.resources.limits),
                "cpu_idle": bool(c.resources.cpu_idle),
                "startup_cpu_boost": bool(c.resources.startup_cpu_boost),
                "startup_probe": run_v2.Probe.to_dict(c.startup_probe) if c.startup_probe else None,
            }
        )
    return {
        "ingress": int(service.ingress),
        "invoker_iam_disabled": bool(service.invoker_iam_disabled),
        "labels": user_keys(service.labels),
        "annotations": {k: v for k, v in service.annotations.items() if k == MODEL_ANNOTATION},
        "template": {
            "service_account": template.service_account,
            "concurrency": template.max_instance_request_concurrency,
            "timeout": template.timeout.total_seconds() if template.timeout else None,
            "max_instances": template.scaling.max_instance_count,
            "accelerator": template.node_selector.accelerator,
            "gpu_zonal_redundancy_disabled": bool(template.gpu_zonal_redundancy_disabled),
            "labels": user_keys(template.labels),
            "containers": containers,
        },
    }


def restorable(previous: run_v2.Service) -> run_v2.Service:
    """The user-settable part of a Service as read back, to send it again (rollback)."""
    return run_v2.Service(
        name=previous.name,
        description=previous.description,
        labels=dict(previous.labels),
        annotations=dict(previous.annotations),
        client=previous.client,
        ingress=previous.ingress,
        launch_stage=previous.launch_stage,
        invoker_iam_disabled=previous.invoker_iam_disabled,
        template=previous.template,
        traffic=list(previous.traffic),
        scaling=previous.scaling,
    )


def is_ready(service: run_v2.Service) -> bool:
    return (
        not service.reconciling
        and service.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
        and service.observed_generation == service.generation
        and service.latest_ready_revision == service.latest_created_revision
    )


def get_service(cloud: GoogleCloud, name: str) -> run_v2.Service | None:
    client = clients.run_services_client(cloud)
    try:
        return client.get_service(name=name, retry=transient_retry())
    except gexc.NotFound:
        return None
    except gexc.Forbidden as exc:
        raise translate_google_error(exc, f"read Cloud Run service {name}") from exc


def _raise_deploy_error(exc: gexc.GoogleAPICallError, spec: ServiceSpec, name: str) -> None:
    message = str(exc.message or exc)
    if is_quota_message(message):
        raise quota_error(message, requested=spec.max_instances) from exc
    if "Quota exceeded" in message:
        raise quota_error(message, requested=spec.max_instances) from exc
    raise translate_google_error(exc, f"deploy Cloud Run service {name}") from exc


def apply_service(cloud: GoogleCloud, spec: ServiceSpec, desired: run_v2.Service) -> DeployOutcome:
    """Create the service, or update it when its spec differs; do nothing when it is equal."""
    client = clients.run_services_client(cloud)
    name = service_name(cloud.project, spec.region, spec.service)
    existing = get_service(cloud, name)
    if existing is not None and service_fingerprint(existing) == service_fingerprint(desired):
        return DeployOutcome("unchanged", name, existing)
    try:
        if existing is None:
            operation = client.create_service(
                parent=f"projects/{cloud.project}/locations/{spec.region}",
                service=desired,
                service_id=spec.service,
                retry=consistency_retry(),
            )
        else:
            desired = run_v2.Service(desired)
            desired.name = name
            operation = client.update_service(
                request=run_v2.UpdateServiceRequest(service=desired, allow_missing=True),
                retry=consistency_retry(),
            )
    except gexc.Conflict:
        return apply_service(cloud, spec, desired)  # created concurrently: compare and update
    except (gexc.BadRequest, gexc.Forbidden, gexc.TooManyRequests, gexc.FailedPrecondition) as exc:
        _raise_deploy_error(exc, spec, name)
        raise
    action: Action = "created" if existing is None else "updated"
    try:
        operation.result(timeout=OPERATION_TIMEOUT_SECONDS)
    except gexc.GoogleAPICallError as exc:
        # The revision failed (quota while reconciling, crash on start): put things back, then fail.
        undo(cloud, DeployOutcome(action, name, existing))
        _raise_deploy_error(exc, spec, name)
        raise
    return DeployOutcome(action, name, existing)


def undo(cloud: GoogleCloud, outcome: DeployOutcome) -> str:
    """Roll a deploy back: delete a service it created, restore the spec it replaced."""
    client = clients.run_services_client(cloud)
    if outcome.action == "created":
        delete_service(cloud, outcome.name)
        return "deleted the new service"
    if outcome.action == "updated" and outcome.previous is not None:
        operation = client.update_service(
            request=run_v2.UpdateServiceRequest(service=restorable(outcome.previous)),
            retry=transient_retry(),
        )
        operation.result(timeout=OPERATION_TIMEOUT_SECONDS)
        return "restored the previous spec"
    return "nothing to undo"


def wait_until_ready(cloud: GoogleCloud, name: str, timeout_seconds: float) -> run_v2.Service:
    """Poll until the service is ready (see ``is_ready``); fail on CONDITION_FAILED or timeout."""
    client = clients.run_services_client(cloud)
    deadline = time.monotonic() + timeout_seconds
    while True:
        service = client.get_service(name=name, retry=transient_retry())
        if is_ready(service):
            return service
        condition = service.terminal_condition
        if condition.state == run_v2.Condition.State.CONDITION_FAILED and not service.reconciling:
            raise ServiceNotReadyError(f"Service {name} failed: {condition.message}")
        if time.monotonic() > deadline:
            raise ServiceNotReadyError(
                f"Service {name} not ready after {timeout_seconds:.0f} s: {condition.message}"
            )
        time.sleep(POLL_INTERVAL_SECONDS)


def ensure_invoker(cloud: GoogleCloud, name: str, member: str) -> bool:
    """Grant ``roles/run.invoker`` to ``member`` only; public members are removed, never added."""
    if member in PUBLIC_MEMBERS or ":" not in member:
        raise ConfigurationError(
            f"invoker {member!r} refused: give user:EMAIL or serviceAccount:EMAIL; "
            "this service stays private (never allUsers)"
        )
    client = clients.run_services_client(cloud)
    policy = client.get_iam_policy(
        request=iam_policy_pb2.GetIamPolicyRequest(resource=name), retry=transient_retry()
    )
    changed = False
    bindings = [b for b in policy.bindings if b.role == INVOKER_ROLE]
    for binding in bindings:
        public = [m for m in binding.members if m in PUBLIC_MEMBERS]
        for m in public:
            binding.members.remove(m)
            changed = True
    if not any(member in b.members for b in bindings):
        if bindings:
            bindings[0].members.append(member)
        else:
            policy.bindings.append(policy_pb2.Binding(role=INVOKER_ROLE, members=[member]))
        changed = True
    if changed:
        client.set_iam_policy(
            request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy),
            retry=consistency_retry(),
        )
    return changed


def delete_service(cloud: GoogleCloud, name: str) -> bool:
    """Delete the service; False when it was already gone."""
    client = clients.run_services_client(cloud)
    try:
        client.delete_service(name=name, retry=transient_retry()).result(
            timeout=OPERATION_TIMEOUT_SECONDS
        )
    except gexc.NotFound:
        return False
    return True


def list_managed_services(
    cloud: GoogleCloud, region: str, label: tuple[str, str]
) -> list[run_v2.Service]:
    client = clients.run_services_client(cloud)
    key, value = label
    services = client.list_services(
        parent=f"projects/{cloud.project}/locations/{region}", retry=transient_retry()
    )
    return [s for s in services if s.labels.get(key) == value]


# -- Prefect tasks ------------------------------------------------------------------------------


@task(name="deploy-service", cache_policy=NO_CACHE)
def deploy_service(
    cloud: GoogleCloud,
    spec: ServiceSpec,
    image: str,
    service_account: str,
    labels: dict[str, str],
) -> DeployOutcome:
    desired = build_service(spec, image, service_account, labels)
    outcome = apply_service(cloud, spec, desired)
    get_run_logger().info("Service %s: %s", outcome.name, outcome.action)
    return outcome


@task(name="grant-invoker", cache_policy=NO_CACHE)
def grant_invoker(cloud: GoogleCloud, name: str, member: str) -> bool:
    changed = ensure_invoker(cloud, name, member)
    get_run_logger().info(
        "%s on %s: %s", INVOKER_ROLE, name, f"granted to {member}" if changed else "unchanged"
    )
    return changed


@dataclass(frozen=True)
class ReadyService:
    name: str
    uri: str
    revision: str


@task(name="wait-until-ready", cache_policy=NO_CACHE)
def wait_ready(cloud: GoogleCloud, name: str, timeout_seconds: float) -> ReadyService:
    service = wait_until_ready(cloud, name, timeout_seconds)
    return ReadyService(service.name, service.uri, service.latest_ready_revision)


@task(name="delete-service", cache_policy=NO_CACHE)
def delete_service_task(cloud: GoogleCloud, name: str) -> bool:
    return delete_service(cloud, name)
