"""Flow ``deploy``: Google's "Ollama on Cloud Run GPUs" tutorial as one idempotent run.

enable APIs → preflight (each region) → repository → image (content-hash tag; the build is
skipped when the tag exists; built as the build service account, which deploy creates and grants
only what a build needs unless an email names the user's own) → runtime service account (no
roles) → in every region at once (``deploy-region`` tasks): Cloud Run service (create, update,
or nothing when unchanged) → ``roles/run.invoker`` for the caller only → wait until ready →
smoke test.

A changed service is rolled out as a canary (flows/canary.py): its new revision gets no traffic
and the tag ``candidate``, is smoke-tested on the tag's URL, and only then gets the traffic
(``traffic_steps``).

Several regions: the image is built once into the repository in the first region (a Cloud Run
service pulls from any region's Artifact Registry) and every region's service runs it. Each
region's service steps run in their own Prefect transaction: when a later step fails after a
change (the smoke test, readiness), the ``deploy-service`` rollback hook puts that region's
traffic back on the revisions that served (or deletes the service it created), and the
``deploy-<service>`` artifact says what serves and why. A region that fails its preflight or its
deploy is reported and left out; the run fails only when every region failed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.futures import PrefectFuture
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from prefect.transactions import Transaction, transaction
from pydantic import Field

from flows import canary
from flows.parameters import DeployParameters
from flows.smoke_test import INVOKER_WAIT_KEY, smoke_test
from tasks import (
    artifact_registry,
    cloud_build,
    cloud_run,
    iam,
    idle,
    preflight,
    service_usage,
    storage,
)
from tasks.clients import GoogleCloud, caller_identity, resolve_cloud
from tasks.errors import OllamaCloudRunError, UnmanagedResourceError
from tasks.models import (
    LAST_USED_LABEL,
    is_managed,
    managed_labels,
    unmanaged_message,
)

DEFAULT_SOURCE_DIR = cloud_build.BUILD_CONTEXT  # ollama-backend/, shipped in the package
NO_BUILD = "none (image tag already existed)"
# What the deploy summary repeats from the smoke test's.
SMOKE_SUMMARY_KEYS = (
    "model",
    "models listed",
    INVOKER_WAIT_KEY,
    "cold start (s)",
    "first token (s)",
    "sample answer",
)


def owner_name() -> str:
    """Who makes the resources: the Prefect deployment running this flow, else the flow."""
    return str(deployment.name or flow_run.get_flow_name() or "deploy")


def caller_member(cloud: GoogleCloud) -> str:
    """The IAM member of the credentials in use (``serviceAccount:`` or ``user:``), for the invoker
    binding: the identity whose ID tokens the smoke test and the batch then send."""
    return caller_identity(cloud).member


def console_links(project: str, params: DeployParameters) -> dict[str, str]:
    base = "https://console.cloud.google.com"
    return {
        **{
            f"service {region}" if len(params.regions) > 1 else "service": f"{base}/run/detail/"
            f"{region}/{params.service}/metrics?project={project}"
            for region in params.regions
        },
        "repository": f"{base}/artifacts/docker/{project}/{params.region}/{params.repository}"
        f"?project={project}",
        "builds": f"{base}/cloud-build/builds?project={project}",
    }


@cloud_run.deploy_service.on_rollback
def _revert_service_change(txn: Transaction) -> None:
    """Rollback hook: put the service back as it was before this run touched it."""
    outcome = txn.get("outcome", None)
    cloud = txn.get("cloud", None)
    if outcome is None or cloud is None:
        return
    done = cloud_run.revert_service(cloud, outcome)
    get_run_logger().warning("Rolled back %s: %s", outcome.name, done)


def _cell(value: object) -> str:
    if isinstance(value, dict):
        value = "<br>".join(f"{k}: {v}" for k, v in value.items())
    return str(value).replace("|", "/")


def _markdown(summary: dict[str, Any]) -> str:
    lines = ["## Deploy", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in summary.items() if k != "regions"]
    if "regions" not in summary:  # a failed region's own record
        return "\n".join(lines) + "\n"
    lines += ["", "### Regions", "", "| region | status | service URL | smoke test |"]
    lines.append("|---|---|---|---|")
    for region, result in summary["regions"].items():
        cells = [result["status"], result.get("uri", "—"), result.get("smoke test", "—")]
        lines.append(f"| {region} | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _find_or_build_image(
    cloud: GoogleCloud, params: DeployParameters, labels: dict[str, str]
) -> tuple[artifact_registry.ImageRef, cloud_build.BuiltImage | None]:
    """The image tagged with its source and model's hash; built only when that tag is absent."""
    build_args = {"MODEL": params.model}
    tag = "src-" + storage.source_hash(params.context, build_args)[:20]
    image = artifact_registry.find_image_tag(
        cloud, params.region, params.repository, params.image, tag
    )
    if image is not None:
        return image, None
    staged = storage.upload_source(cloud, params.context, labels, params.region)
    builder = cloud_build.ensure_build_service_account(
        cloud, params.build_service_account, params.region, params.repository, staged.bucket
    )
    built = cloud_build.build_image(
        cloud,
        staged,
        artifact_registry.image_uri(
            cloud.project, params.region, params.repository, params.image, tag
        ),
        build_args,
        params.build_timeout_seconds,
        params.build_machine_type,
        managed_labels(params.service, owner_name()),
        service_account=builder,
    )
    return artifact_registry.ImageRef(built.image, built.digest), built


class PlanApproval(RunInput):
    """The form a paused deploy shows: apply the plan above, or not."""

    approve: bool = Field(description="apply the plan shown in the plan artifact")
    comment: str = Field(default="", description="why (kept in the run's log)")


def _plan_first(params: DeployParameters) -> dict[str, Any] | None:
    """The plan, when asked for: what to return instead of deploying (plan only, or a rejected
    approval), else None to go on."""
    if not (params.plan_only or params.plan_first or params.require_approval):
        return None
    from flows.plan import plan  # flows.plan builds on this module's parameters

    planned = plan(params)
    if params.plan_only:
        return planned
    if params.require_approval:
        approval = pause_flow_run(
            wait_for_input=PlanApproval,
            timeout=params.approval_timeout_seconds,
            poll_interval=2,
        )
        get_run_logger().info(
            "Plan %s: %s", "approved" if approval.approve else "rejected", approval.comment
        )
        if not approval.approve:
            return {"approved": False, "comment": approval.comment, "plan": planned}
    return None


def deployable_regions(
    cloud: GoogleCloud, params: DeployParameters, reports: dict[str, preflight.PreflightReport]
) -> tuple[list[str], dict[str, str]]:
    """The regions to deploy to, and why each other one is left out (its preflight failed, or a
    service this project did not make has its name there). None left: the first region's error."""
    left_out: dict[str, str] = {}
    errors: list[OllamaCloudRunError] = []
    for region in params.regions:
        try:
            reports[region].raise_for_problems()
            name = cloud_run.service_name(cloud.project, region, params.service)
            existing = cloud_run.get_service(cloud, name)
            if existing is not None and not is_managed(existing.labels) and not params.adopt:
                # Before the build: refusing costs seconds and touches nothing.
                raise UnmanagedResourceError(unmanaged_message("Cloud Run service", name))
        except OllamaCloudRunError as exc:
            left_out[region] = f"left out: {exc}"
            errors.append(exc)
    if errors and len(errors) == len(params.regions):
        raise errors[0]
    for region, why in left_out.items():
        get_run_logger().warning("Region %s %s", region, why)
    return [r for r in params.regions if r not in left_out], left_out


@task(name="deploy-region", cache_policy=NO_CACHE)
def deploy_region(
    cloud: GoogleCloud,
    params: DeployParameters,
    image: str,
    service_account: str,
    labels: dict[str, str],
    member: str,
) -> dict[str, Any]:
    """One region's service (``params`` for that region alone): deploy → invoker → ready → canary
    or smoke test, in its own transaction, so that a failure after a change undoes this region
    only (``_revert_service_change``), and the artifact records what serves there and why."""
    outcome: cloud_run.DeployOutcome | None = None
    name = cloud_run.service_name(cloud.project, params.region, params.service)
    smoke: dict[str, object] = {}
    rolled: dict[str, str] = {}
    try:
        with transaction() as txn:
            sa_wait = params.service_account_propagation_timeout_seconds  # a new one: 403 actAs
            outcome = cloud_run.deploy_service(
                cloud, params.spec, image, service_account, labels, params.adopt, sa_wait
            )
            txn.set("cloud", cloud)
            txn.set("outcome", outcome)
            granted = cloud_run.grant_invoker(cloud, outcome.name, member)
            service = cloud_run.wait_until_ready(cloud, name, params.ready_timeout_seconds)
            if outcome.candidate:
                smoke, rolled = canary.roll_out(cloud, params, outcome)
            elif params.run_smoke_test:
                smoke = smoke_test(canary.smoke_parameters(cloud, params))
    except Exception as exc:
        record = canary.failed_rollout(cloud, name, outcome, exc)
        if record is not None:
            create_markdown_artifact(
                markdown=_markdown({"service": name, "rollout": record}),
                key=f"deploy-{params.service}",
                description=f"Failed deploy of {name}",
            )
        raise
    actions = {
        "service": outcome.action,
        "invoker": f"{'granted to' if granted else 'kept for'} {member}",
    }
    cloud_run.record_service_use(cloud, outcome.name)  # an unchanged redeploy is a use too
    get_run_logger().info("Deployed %s at %s (%s)", outcome.name, service.uri, outcome.action)
    result: dict[str, Any] = {
        "status": f"deployed ({outcome.action})",
        "service": outcome.name,
        "uri": service.uri,
        "revision": service.revision,
        "rollout": rolled
        or {"serving": f"{service.revision} (100 %)", "why": f"service {outcome.action}"},
        "actions": actions,
    }
    if smoke:
        result["smoke test"] = {k: smoke[k] for k in SMOKE_SUMMARY_KEYS if k in smoke}
    return result


def deployed_regions(
    futures: dict[str, PrefectFuture[dict[str, Any]]], left_out: dict[str, str], order: list[str]
) -> dict[str, dict[str, Any]]:
    """Every region's result in ``order``: deployed, failed (rolled back) or left out. Raises
    the first region's error when none deployed."""
    results: dict[str, dict[str, Any]] = {r: {"status": why} for r, why in left_out.items()}
    errors: list[BaseException] = []
    for region, future in futures.items():
        try:
            results[region] = future.result()
        except Exception as exc:
            get_run_logger().warning("Region %s failed and is left out: %s", region, exc)
            results[region] = {"status": f"failed (rolled back): {exc}"}
            errors.append(exc)
    if errors and len(errors) == len(futures):
        raise errors[0]
    return {r: results[r] for r in order}


def is_deployed(result: dict[str, Any]) -> bool:
    return str(result.get("status", "")).startswith("deployed")


@flow(name="deploy")
def deploy(params: DeployParameters | None = None) -> dict[str, Any]:
    """Deploy (or confirm) the service in each region; returns the summary also stored as
    ``deploy-<service>`` (its top-level service, uri and actions: the first deployed region's)."""
    params = params or DeployParameters()
    stop = _plan_first(params)
    if stop is not None:
        return stop
    cloud = resolve_cloud(params.project, params.credentials_block)
    member = params.invoker or caller_member(cloud)
    labels = managed_labels(params.service, owner_name(), flow_run.get_name())
    labels[LAST_USED_LABEL] = str(int(idle.now()))  # a deploy is a use (tasks/idle.py)
    actions: dict[str, str] = {}

    cloud = cloud.with_enabled(service_usage.enable_apis(cloud))  # first: the preflight needs them
    # Fails in seconds, before any build, naming region, ID token, permission or quota problems
    # (each region against its own quota); a region that fails is left out unless all do.
    specs = [params.spec_for(region) for region in params.regions]
    reports = preflight.preflight_regions(
        cloud, specs, params.run_smoke_test, params.manages_build_account
    )
    regions, left_out = deployable_regions(cloud, params, reports)
    _, repo_created = artifact_registry.ensure_repository(
        cloud, params.region, params.repository, labels, params.adopt
    )
    actions["repository"] = "created" if repo_created else "exists"
    image, built = _find_or_build_image(cloud, params, labels)
    actions["image"] = "built" if built else "skipped (tag exists)"
    sa_email, sa_created = iam.ensure_service_account(
        cloud, params.service_account_id, f"Ollama on Cloud Run ({params.service})"
    )
    actions["service account"] = "created" if sa_created else "exists"

    futures = {
        region: deploy_region.submit(
            cloud, params.for_region(region), image.digest_uri, sa_email, labels, member
        )
        for region in regions
    }
    results = deployed_regions(futures, left_out, params.regions)
    first_region = next(r for r in params.regions if is_deployed(results[r]))
    first = results[first_region]
    summary: dict[str, Any] = {
        "service": first["service"],
        "uri": first["uri"],
        "revision": first["revision"],
        "rollout": first["rollout"],
        "image": image.tag_uri,
        "digest": image.digest,
        "build": f"{built.build_id} ({built.log_url})" if built else NO_BUILD,
        "actions": {**actions, **first["actions"]},
        "console": console_links(cloud.project, params),
        "preflight": reports[first_region].summary(),
        "regions": results,
    }
    if "smoke test" in first:
        summary["smoke test"] = first["smoke test"]
    create_markdown_artifact(
        markdown=_markdown(summary),
        key=f"deploy-{params.service}",
        description=f"Deploy of {params.service} in {', '.join(params.regions)}",
    )
    return summary
