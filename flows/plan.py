"""Flow ``plan``: what ``deploy`` would change, per resource, without changing anything.

For the APIs, the repository (in the first region), the image (and, when it would be built, the
build's service account), the runtime service account, and in each region the Cloud Run service
and its IAM binding: ``create``, ``update`` (for the service, field by field: the live spec
against the declared one, compared as ``cloud_run.service_fingerprint`` compares them), ``no
change`` or ``blocked`` (with why: a region without L4 GPUs, a quota too small, a resource this
project did not create, Cloud Run rejecting the request). The service request itself is sent to
Cloud Run with ``validate_only`` ("Indicates that the request should be validated and default
values populated, without persisting the request or creating any resources", Cloud Run Admin v2
``projects.locations.services.create`` / ``patch``,
https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.services/create).
Every other call is a read: the emulator's request log shows only GETs and those two.
The plan is printed (the CLI prints the returned rows) and stored as a ``plan-<service>``
markdown artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import run_v2, service_usage_v1
from google.iam.v1 import policy_pb2
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.deploy import caller_member, owner_name
from flows.parameters import DeployParameters
from tasks import (
    artifact_registry,
    clients,
    cloud_run,
    drift,
    iam,
    preflight,
    rollout,
    service_usage,
    storage,
)
from tasks.clients import GoogleCloud, resolve_cloud
from tasks.errors import AccessDeniedError, OllamaCloudRunError, google_errors
from tasks.models import is_managed, managed_labels, unmanaged_message
from tasks.retries import transient_retry

Action = Literal["create", "update", "no change", "blocked"]
T = TypeVar("T")
NO_CHANGES = "no changes"


@dataclass(frozen=True)
class Change:
    resource: str
    name: str
    action: Action
    details: str = ""


def _read(read: Callable[[], T]) -> tuple[T | None, str | None]:
    """A read for the plan: (value, None), or (None, the API that is not enabled yet)."""
    try:
        return read(), None
    except gexc.NotFound:
        return None, None
    except AccessDeniedError as exc:
        if exc.api is None:
            raise
        return None, exc.api


def enabled_apis(cloud: GoogleCloud) -> set[str]:
    client = clients.service_usage_client(cloud)
    request = service_usage_v1.ListServicesRequest(
        parent=f"projects/{cloud.project}", filter="state:ENABLED"
    )
    with google_errors("list the enabled APIs"):
        return {
            s.config.name or s.name.rsplit("/", 1)[-1]
            for s in client.list_services(request=request, retry=transient_retry(cloud))
        }


def _show(value: Any) -> str:
    return "(absent)" if value is None else str(value)


def service_changes(
    cloud: GoogleCloud, params: DeployParameters, desired: run_v2.Service, run_enabled: bool
) -> Change:
    """The service's change, Cloud Run's validate_only verdict included."""
    name = cloud_run.service_name(cloud.project, params.region, params.service)
    region = preflight.check_region(params.spec)
    if region.outcome == "failed":
        return Change("service", name, "blocked", f"region: {region.detail}")
    try:
        limits = preflight.quota_limits(cloud, params.spec)
        quota, _ = preflight.check_quotas(params.spec, limits, cloud.project)
        if quota.outcome == "failed":
            return Change("service", name, "blocked", f"quota: {quota.detail}")
    except preflight.CannotCheck as exc:
        get_run_logger().warning("Plan cannot check quotas: %s", exc)
    if not run_enabled:
        return Change("service", name, "create", "Cloud Run is enabled first; validated then")
    existing = cloud_run.get_service(cloud, name)
    if existing is not None and not is_managed(existing.labels) and not params.adopt:
        return Change("service", name, "blocked", unmanaged_message("Cloud Run service", name))
    if existing is not None:
        diff = drift.spec_diff(
            cloud_run.service_fingerprint(existing), cloud_run.service_fingerprint(desired)
        )
        if not diff and rollout.serves_latest(existing):
            return Change("service", name, "no change")
        action: Action = "update"
        details = "; ".join(f"{f}: {_show(live)} → {_show(want)}" for f, live, want in diff)
        serving = ", ".join(map(str, rollout.serving(existing))) or "nothing"
        details += f"{'; ' if details else ''}canary: traffic stays on {serving} until the new "
        details += f"revision passes its smoke test on its tag URL (steps {params.traffic_steps})"
    else:
        action, details = "create", ""
    problem = validate_service(cloud, params, name, desired, existing is not None)
    if problem is not None:
        return Change("service", name, "blocked", problem)
    return Change("service", name, action, (details + "; " if details else "") + "validated")


def validate_service(
    cloud: GoogleCloud, params: DeployParameters, name: str, desired: run_v2.Service, exists: bool
) -> str | None:
    """Cloud Run's ``validate_only`` on the request deploy would send; its objection, or None."""
    client = clients.run_services_client(cloud)
    try:
        with google_errors(f"validate Cloud Run service {name}", requested=params.max_instances):
            if exists:
                update = run_v2.Service(desired)
                update.name = name
                operation = client.update_service(
                    request=run_v2.UpdateServiceRequest(service=update, validate_only=True),
                    retry=transient_retry(cloud),
                )
            else:
                operation = client.create_service(
                    request=run_v2.CreateServiceRequest(
                        parent=f"projects/{cloud.project}/locations/{params.region}",
                        service=desired,
                        service_id=params.service,
                        validate_only=True,
                    ),
                    retry=transient_retry(cloud),
                )
            operation.result(timeout=60)
    except (OllamaCloudRunError, gexc.GoogleAPICallError) as exc:
        return f"Cloud Run rejects the request: {exc}"
    return None


def invoker_change(cloud: GoogleCloud, name: str, member: str, exists: bool) -> Change:
    if not exists:
        return Change("IAM binding", name, "create", f"{cloud_run.INVOKER_ROLE}: {member}")
    policy = policy_pb2.Policy()
    policy.CopyFrom(cloud_run.get_iam_policy(cloud, name))
    public = [m for b in policy.bindings for m in b.members if m in cloud_run.PUBLIC_MEMBERS]
    if not cloud_run.set_private_invoker(policy, member):
        return Change("IAM binding", name, "no change", f"{cloud_run.INVOKER_ROLE}: {member}")
    wanted = [f"grant {cloud_run.INVOKER_ROLE} to {member}"] if not public else []
    wanted += [f"remove {m}" for m in public]
    return Change("IAM binding", name, "update", "; ".join(wanted) or "grant")


def plan_changes(cloud: GoogleCloud, params: DeployParameters) -> list[Change]:
    """Every resource deploy manages, with what deploy would do to it. Reads only."""
    changes: list[Change] = []
    enabled, _ = _read(lambda: enabled_apis(cloud))
    enabled = enabled or set()
    missing = [s for s in service_usage.REQUIRED_SERVICES if s not in enabled]
    changes.append(
        Change("APIs", f"projects/{cloud.project}", "create", "enable " + ", ".join(missing))
        if missing
        else Change("APIs", f"projects/{cloud.project}", "no change")
    )
    repo_name = artifact_registry.repository_name(cloud.project, params.region, params.repository)
    repo, _ = _read(
        lambda: artifact_registry.get_repository(cloud, params.region, params.repository)
    )
    if repo is None:
        changes.append(Change("repository", repo_name, "create"))
    elif not is_managed(repo.labels) and not params.adopt:
        reason = unmanaged_message("Artifact Registry repository", repo_name)
        changes.append(Change("repository", repo_name, "blocked", reason))
    else:
        changes.append(Change("repository", repo_name, "no change"))

    tag = "src-" + storage.source_hash(params.context, {"MODEL": params.model})[:20]
    uri = artifact_registry.image_uri(
        cloud.project, params.region, params.repository, params.image, tag
    )
    image, _ = _read(
        lambda: artifact_registry.find_image_tag.fn(
            cloud, params.region, params.repository, params.image, tag
        )
    )
    changes.append(
        Change("image", uri, "no change", image.digest)
        if image is not None
        else Change(
            "image", uri, "create", f"Cloud Build of {params.context} (MODEL={params.model})"
        )
    )

    if image is None:
        changes.append(build_account_change(cloud, params))
    email = iam.service_account_email(cloud.project, params.service_account_id)
    account, _ = _read(lambda: iam.get_service_account(cloud, email))
    changes.append(Change("service account", email, "no change" if account else "create"))

    run_enabled = "run.googleapis.com" in enabled
    member = params.invoker or caller_member(cloud)
    for region in params.regions:  # each region's service and binding, against its own quota
        here = params.for_region(region)
        image_ref = image.digest_uri if image is not None else uri
        changes += region_changes(cloud, here, image_ref, member, run_enabled)
    return changes


def region_changes(
    cloud: GoogleCloud, params: DeployParameters, image: str, member: str, run_enabled: bool
) -> list[Change]:
    """The service in ``params.region`` and its IAM binding."""
    email = iam.service_account_email(cloud.project, params.service_account_id)
    labels = managed_labels(params.service, owner_name())
    desired = cloud_run.build_service(params.spec, image, email, labels)
    service = service_changes(cloud, params, desired, run_enabled)
    exists = service.action in ("update", "no change") or (
        service.action == "blocked" and run_enabled and _exists(cloud, service.name)
    )
    return [service, invoker_change(cloud, service.name, member, exists)]


def build_account_change(cloud: GoogleCloud, params: DeployParameters) -> Change:
    """The account the build would run as: deploy's own (created, granted only what a build
    needs) or the one named by email (used as it is)."""
    if not params.manages_build_account:
        return Change("build account", params.build_service_account, "no change", "yours, as is")
    email = iam.service_account_email(cloud.project, params.build_service_account)
    account, _ = _read(lambda: iam.get_service_account(cloud, email))
    grants = "objectViewer on the staging bucket, writer on the repository, logWriter"
    return Change("build account", email, "no change" if account else "create", grants)


def _exists(cloud: GoogleCloud, name: str) -> bool:
    return cloud_run.get_service(cloud, name) is not None


def summary(changes: list[Change]) -> str:
    counts = {a: sum(c.action == a for c in changes) for a in ("create", "update", "blocked")}
    if not any(counts.values()):
        return NO_CHANGES
    return ", ".join(
        f"{n} to {a}" if a != "blocked" else f"{n} blocked" for a, n in counts.items() if n
    )


def markdown(service: str, changes: list[Change]) -> str:
    lines = [
        f"## Plan for {service}: {summary(changes)}",
        "",
        "| resource | name | action | details |",
    ]
    lines.append("|---|---|---|---|")
    for c in changes:
        cells = [c.resource, c.name, f"**{c.action}**", c.details]
        lines.append("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
    return "\n".join(lines) + "\n"


@flow(name="plan")
def plan(params: DeployParameters | None = None) -> dict[str, Any]:
    """What deploy would change, per resource (artifact ``plan-<service>``); changes nothing."""
    params = params or DeployParameters()
    cloud = resolve_cloud(params.project, params.credentials_block)
    changes = plan_changes(cloud, params)
    text = markdown(params.service, changes)
    create_markdown_artifact(
        markdown=text, key=f"plan-{params.service}", description=f"Plan for {params.service}"
    )
    get_run_logger().info("Plan:\n%s", text)
    return {"summary": summary(changes), "changes": [asdict(c) for c in changes]}
