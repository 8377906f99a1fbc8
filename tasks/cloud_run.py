"""Cloud Run Admin v2: the private GPU service, its invoker binding and its readiness.

``build_service`` is the pure translation of ``gcloud beta run deploy`` flags into a
``run_v2.Service``; ``service_fingerprint`` is what a rerun compares so that an unchanged spec is
never sent again (no new revision).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from google.api_core import exceptions as gexc
from google.api_core.operation import Operation
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import duration_pb2, field_mask_pb2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients, iam, idle, monitoring, rollout
from tasks.clients import GoogleCloud
from tasks.deletions import Deletion, Outcome, delete_resource, list_or_empty
from tasks.errors import (
    ConfigurationError,
    OllamaCloudRunError,
    ServiceNotReadyError,
    UnmanagedResourceError,
    google_errors,
)
from tasks.models import (
    BOOKKEEPING_LABELS,
    DECLARED_ANNOTATION,
    L4_REGIONS,
    LAST_USED_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    MODEL_ANNOTATION,
    OWNER_LABEL,
    ServiceSpec,
    is_managed,
    unmanaged_message,
)
from tasks.propagation import (
    INVOKER_ROLE,
    SERVICE_ACCOUNT_PROPAGATION_TIMEOUT_SECONDS,
    retry_act_as,
)
from tasks.retries import consistency_retry, transient_retry

PUBLIC_MEMBERS = frozenset({"allUsers", "allAuthenticatedUsers"})
OPERATION_TIMEOUT_SECONDS = 1800.0
POLL_INTERVAL_SECONDS = 1.0
SERVICE_KIND = "service"

Action = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class DeployOutcome:
    """What ``deploy_service`` did; ``previous`` is the spec before an update (for rollback).

    An update makes ``candidate``, a revision tagged ``candidate`` with no traffic; ``serving``
    is where the traffic stays until the flow moves it (tasks/rollout.py)."""

    action: Action
    name: str
    previous: run_v2.Service | None
    candidate: str = ""
    serving: tuple[rollout.Share, ...] = ()


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
    service = run_v2.Service(
        ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL,
        invoker_iam_disabled=False,
        labels=dict(labels),
        annotations={MODEL_ANNOTATION: spec.model},
        template=template,
    )
    # What drift checks compare the live service with (the fingerprint ignores this annotation).
    declared = json.dumps(service_fingerprint(service), sort_keys=True, separators=(",", ":"))
    service.annotations[DECLARED_ANNOTATION] = declared
    return service


def service_fingerprint(service: run_v2.Service) -> dict[str, Any]:
    """The user-settable fields this project manages, normalised; bookkeeping labels (flow run,
    owner, last use) excluded."""

    def user_keys(values: Any) -> dict[str, str]:
        # Google's own keys (``run.googleapis.com/...``) and bookkeeping labels are not our spec.
        return {
            k: v for k, v in dict(values).items() if k not in BOOKKEEPING_LABELS and "/" not in k
        }

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


def get_iam_policy(cloud: GoogleCloud, name: str) -> policy_pb2.Policy:
    client = clients.run_services_client(cloud)
    with google_errors(f"read the IAM policy of {name}"):
        return client.get_iam_policy(
            request=iam_policy_pb2.GetIamPolicyRequest(resource=name),
            retry=transient_retry(cloud),
        )


def is_ready(service: run_v2.Service) -> bool:
    return (
        not service.reconciling
        and service.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
        and service.observed_generation == service.generation
        and service.latest_ready_revision == service.latest_created_revision
    )


def get_service(cloud: GoogleCloud, name: str) -> run_v2.Service | None:
    """The service, or None when it does not exist."""
    client = clients.run_services_client(cloud)
    with google_errors(f"read Cloud Run service {name}"):
        try:
            return client.get_service(name=name, retry=transient_retry(cloud))
        except gexc.NotFound:
            return None


@task(name="deploy-service", cache_policy=NO_CACHE)
def deploy_service(
    cloud: GoogleCloud,
    spec: ServiceSpec,
    image: str,
    service_account: str,
    labels: dict[str, str],
    adopt: bool = False,
    account_propagation_seconds: float = SERVICE_ACCOUNT_PROPAGATION_TIMEOUT_SECONDS,
) -> DeployOutcome:
    """Create the service, or update it when its spec differs; do nothing when it is equal.

    A same-named service without ``managed-by=ollama-cloudrun`` is refused (nothing sent) unless
    ``adopt``: then it is labelled as ours and updated. Cloud Run's 403 actAs for a runtime
    account younger than ``account_propagation_seconds`` is retried (``tasks.propagation``). A
    revision that fails (quota while reconciling, crash on start) is undone before the error is
    raised: a new service deleted, a replaced spec restored.
    """
    desired = build_service(spec, image, service_account, labels)
    name = service_name(cloud.project, spec.region, spec.service)
    with google_errors(f"deploy Cloud Run service {name}", requested=spec.max_instances):
        outcome, operation = retry_act_as(
            partial(_send_service, cloud, spec, name, desired, adopt),
            service_account,
            partial(iam.account_created_at, cloud, service_account),
            account_propagation_seconds,
        )
        if operation is not None:
            try:
                operation.result(timeout=OPERATION_TIMEOUT_SECONDS)
            except gexc.GoogleAPICallError:
                revert_service(cloud, outcome)
                raise
    get_run_logger().info("Service %s: %s", outcome.name, outcome.action)
    return outcome


def _send_service(
    cloud: GoogleCloud, spec: ServiceSpec, name: str, desired: run_v2.Service, adopt: bool
) -> tuple[DeployOutcome, Operation | None]:
    """Create or update (not waited); (unchanged outcome, None) when the spec is already equal."""
    client = clients.run_services_client(cloud)
    while True:
        existing = get_service(cloud, name)
        if existing is not None and not is_managed(existing.labels) and not adopt:
            raise UnmanagedResourceError(unmanaged_message("Cloud Run service", name))
        declared = service_fingerprint(desired)
        same = existing is not None and service_fingerprint(existing) == declared
        if existing is not None and same and rollout.serves_latest(existing):
            return DeployOutcome("unchanged", name, existing), None
        try:
            if existing is None:
                operation = client.create_service(
                    parent=f"projects/{cloud.project}/locations/{spec.region}",
                    service=desired,
                    service_id=spec.service,
                    retry=consistency_retry(cloud),
                )
                return DeployOutcome("created", name, None), operation
            return _send_candidate(cloud, existing, desired, same)
        except gexc.Conflict:
            continue  # created concurrently: compare again, then update


def _send_candidate(
    cloud: GoogleCloud, existing: run_v2.Service, desired: run_v2.Service, same: bool
) -> tuple[DeployOutcome, Operation]:
    """The update as a canary: the new revision named, tagged ``candidate``, no traffic; the
    revisions serving keep theirs. A same spec whose latest revision is ready but does not serve
    yet (a rollout that stopped) is tagged again: no new revision."""
    shares = rollout.serving(existing)
    latest = existing.latest_created_revision
    candidate = ""
    if shares and same and latest and existing.latest_ready_revision == latest:
        candidate, update = latest, rollout.restorable(existing)
    else:
        update = run_v2.Service(desired)
        update.name = existing.name
        if OWNER_LABEL in existing.labels and is_managed(existing.labels):
            update.labels[OWNER_LABEL] = existing.labels[OWNER_LABEL]  # the maker stays owner
        if shares:  # else nothing serves: no traffic to keep, the new revision takes it all
            candidate = rollout.new_revision_name(existing.name.rsplit("/", 1)[-1])
            update.template.revision = candidate
    if candidate:
        update.traffic = rollout.candidate_traffic(shares, candidate)
    operation = clients.run_services_client(cloud).update_service(
        request=run_v2.UpdateServiceRequest(service=update, allow_missing=True),
        retry=consistency_retry(cloud),
    )
    return DeployOutcome("updated", existing.name, existing, candidate, shares), operation


def revert_service(cloud: GoogleCloud, outcome: DeployOutcome) -> str:
    """Roll a deploy back: delete a service it created; the traffic back where it was (the
    candidate untagged, no new revision); else restore the spec it replaced.

    Returns what it did, for the log.
    """
    if outcome.action == "created":
        delete_service.fn(cloud, outcome.name)
        return "deleted the new service"
    if outcome.candidate and outcome.serving:
        rollout.move_traffic.fn(cloud, outcome.name, rollout.pinned(outcome.serving))
        kept = ", ".join(map(str, outcome.serving))
        return f"traffic kept on {kept}; the candidate {outcome.candidate} untagged"
    if outcome.action == "updated" and outcome.previous is not None:
        client = clients.run_services_client(cloud)
        with google_errors(f"restore Cloud Run service {outcome.name}"):
            operation = client.update_service(
                request=run_v2.UpdateServiceRequest(service=rollout.restorable(outcome.previous)),
                retry=transient_retry(cloud),
            )
            operation.result(timeout=OPERATION_TIMEOUT_SECONDS)
        return "restored the previous spec"
    return "nothing to undo"


@task(name="record-service-use", cache_policy=NO_CACHE)
def record_service_use(cloud: GoogleCloud, name: str) -> bool:
    """Stamp ``last-used=<Unix seconds>`` on a managed service (labels only: no new revision).

    At most once per ``tasks.idle.RECORD_INTERVAL_SECONDS``; a missing or unmanaged service is
    left alone. Returns whether a label was written.
    """
    service = get_service(cloud, name)
    at = idle.now()
    if service is None or not is_managed(service.labels):
        return False
    if not idle.should_record_use(service.labels, at):
        return False
    labels = dict(service.labels)
    labels[LAST_USED_LABEL] = str(int(at))
    client = clients.run_services_client(cloud)
    with google_errors(f"record the use of Cloud Run service {name}"):
        # Cloud Run Admin v2 services.patch with updateMask=labels: only the labels change.
        operation = client.update_service(
            request=run_v2.UpdateServiceRequest(
                service=run_v2.Service(name=name, labels=labels),
                update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
            ),
            retry=consistency_retry(cloud),
        )
        operation.result(timeout=OPERATION_TIMEOUT_SECONDS)
    return True


@dataclass(frozen=True)
class ReadyService:
    name: str
    uri: str
    revision: str


@task(name="wait-until-ready", cache_policy=NO_CACHE)
def wait_until_ready(cloud: GoogleCloud, name: str, timeout_seconds: float) -> ReadyService:
    """Poll until the service is ready (see ``is_ready``); fail on CONDITION_FAILED or timeout."""
    client = clients.run_services_client(cloud)
    deadline = time.monotonic() + timeout_seconds
    while True:
        with google_errors(f"read Cloud Run service {name}"):
            service = client.get_service(name=name, retry=transient_retry(cloud))
        if is_ready(service):
            return ReadyService(service.name, service.uri, service.latest_ready_revision)
        condition = service.terminal_condition
        if condition.state == run_v2.Condition.State.CONDITION_FAILED and not service.reconciling:
            raise ServiceNotReadyError(f"Service {name} failed: {condition.message}")
        if time.monotonic() > deadline:
            raise ServiceNotReadyError(
                f"Service {name} not ready after {timeout_seconds:.0f} s: {condition.message}"
            )
        time.sleep(POLL_INTERVAL_SECONDS)


@task(name="grant-invoker", cache_policy=NO_CACHE)
def grant_invoker(cloud: GoogleCloud, name: str, member: str) -> bool:
    """Grant ``roles/run.invoker`` to ``member`` only; public members are removed, never added.

    Returns whether the policy changed.
    """
    if member in PUBLIC_MEMBERS or ":" not in member:
        raise ConfigurationError(
            f"invoker {member!r} refused: give user:EMAIL or serviceAccount:EMAIL; "
            "this service stays private (never allUsers)"
        )
    client = clients.run_services_client(cloud)
    with google_errors(f"grant {INVOKER_ROLE} on {name}"):
        policy = client.get_iam_policy(
            request=iam_policy_pb2.GetIamPolicyRequest(resource=name),
            retry=transient_retry(cloud),
        )
        changed = set_private_invoker(policy, member)
        if changed:
            client.set_iam_policy(
                request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy),
                retry=consistency_retry(cloud),
            )
    get_run_logger().info(
        "%s on %s: %s", INVOKER_ROLE, name, f"granted to {member}" if changed else "unchanged"
    )
    return changed


def set_private_invoker(policy: policy_pb2.Policy, member: str) -> bool:
    """Edit ``policy`` in place: ``member`` invokes, no public member does. True if it changed."""
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
    return changed


@task(name="delete-service", cache_policy=NO_CACHE)
def delete_service(cloud: GoogleCloud, name: str) -> Deletion:
    """Delete the service (already gone is success)."""
    client = clients.run_services_client(cloud)
    return delete_resource(
        SERVICE_KIND,
        name,
        lambda: client.delete_service(name=name, retry=transient_retry(cloud)).result(
            timeout=OPERATION_TIMEOUT_SECONDS
        ),
    )


def list_services(cloud: GoogleCloud, region: str) -> list[run_v2.Service]:
    """The services in ``region``."""
    parent = f"projects/{cloud.project}/locations/{region}"
    with google_errors(f"list the Cloud Run services of {parent}"):
        client = clients.run_services_client(cloud)
        return list(client.list_services(parent=parent, retry=transient_retry(cloud)))


def list_managed_services(cloud: GoogleCloud, region: str) -> list[run_v2.Service]:
    """The services in ``region`` labelled ``managed-by=ollama-cloudrun``."""
    services = list_services(cloud, region)
    return [s for s in services if s.labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE]


def list_all_services(cloud: GoogleCloud, regions: Iterable[str] = ()) -> list[run_v2.Service]:
    """Every service of the project in ``regions`` and in every L4 region (where deploy's can be),
    region by region: Cloud Run v2's list "cannot be the "-" wildcard"."""
    return [s for r in sorted(L4_REGIONS | set(regions)) for s in list_services(cloud, r)]


def _use_reason(
    cloud: GoogleCloud, service: run_v2.Service, at: float, idle_hours: float
) -> str | None:
    """Why an idle-looking service is still in use: requests in Cloud Monitoring over the
    window, or the count unknown (then it is kept: the sweep deletes only what it knows)."""
    _, _, region, _, short = service.name.split("/")[-5:]
    end = dt.datetime.fromtimestamp(at, dt.UTC)
    start = end - dt.timedelta(hours=idle_hours)
    try:
        count = monitoring.count_requests(cloud, region, short, start, end)
    except (OllamaCloudRunError, gexc.GoogleAPICallError, gexc.RetryError) as exc:
        return f"request count unknown ({type(exc).__name__}: {exc})"
    if count:
        return f"{count} request(s) in the last {idle_hours:g} h (Cloud Monitoring)"
    return None


@task(name="sweep-idle-services", cache_policy=NO_CACHE)
def sweep_idle_services(
    cloud: GoogleCloud,
    regions: list[str],
    at: float,
    idle_hours: float,
    protected: frozenset[str],
) -> list[Deletion]:
    """Delete every managed service in ``regions`` that is idle at ``at`` (tasks/idle.py): its
    ``expires-at`` has passed, or no recorded use and no request for ``idle_hours``. Kept ones
    are returned too (outcome ``kept``, with why)."""
    looked: list[Deletion] = []
    for region in regions:
        for service in list_or_empty(partial(list_managed_services, cloud, region)):
            labels = service.labels
            why = idle.keep_reason(service.name, labels, protected)
            idle_why = idle.idle_reason(labels, service.update_time, at, idle_hours)
            if why is None and idle_why is None:
                why = f"used within the last {idle_hours:g} h"
            if why is None and idle.expired_reason(labels, at) is None:
                why = _use_reason(cloud, service, at, idle_hours)
            if why is not None:
                looked.append(Deletion(SERVICE_KIND, service.name, Outcome.KEPT, why))
                continue
            looked.append(delete_service.fn(cloud, service.name).because(str(idle_why)))
    for deletion in looked:
        get_run_logger().info("Sweep %s: %s (%s)", deletion.name, deletion.outcome, deletion.why)
    return looked
