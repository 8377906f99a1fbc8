"""Cloud Build: build the Ollama image from a staged tarball, as ``gcloud builds submit --tag``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import artifact_registry, clients, iam, storage
from tasks.clients import GoogleCloud
from tasks.deletions import Deletion, list_or_empty
from tasks.errors import BuildFailedError, google_errors
from tasks.retries import transient_retry
from tasks.storage import StagedSource

DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
# The image's build context, shipped with the package (a symlink to ollama-backend/ in the source
# tree, real files in the wheel), so `pip install .` alone can deploy.
BUILD_CONTEXT = Path(__file__).resolve().parent / "ollama_backend"
POLL_INTERVAL_SECONDS = 1.0
# What a build of ours needs, each at the narrowest scope Google supports for it: read the staged
# source (the staging bucket), push the image (the repository), write logs (the project: Cloud
# Logging has no narrower grant). https://cloud.google.com/build/docs/cloud-build-service-account-
# updates and .../securing-builds/configure-user-specified-service-accounts.
SOURCE_ROLE = "roles/storage.objectViewer"
PUSH_ROLE = "roles/artifactregistry.writer"
LOGS_ROLE = "roles/logging.logWriter"
BUILD_ACCOUNT_PURPOSE = "Ollama on Cloud Run image builds (Cloud Build)"
_TERMINAL = {
    cloudbuild_v1.Build.Status.SUCCESS,
    cloudbuild_v1.Build.Status.FAILURE,
    cloudbuild_v1.Build.Status.INTERNAL_ERROR,
    cloudbuild_v1.Build.Status.TIMEOUT,
    cloudbuild_v1.Build.Status.CANCELLED,
    cloudbuild_v1.Build.Status.EXPIRED,
}


@dataclass(frozen=True)
class BuiltImage:
    build_id: str
    log_url: str
    image: str  # the tag URI that was pushed
    digest: str  # sha256:...


def build_request(
    source: StagedSource,
    image: str,
    build_args: dict[str, str],
    timeout_seconds: int,
    machine_type: str = "E2_HIGHCPU_32",
    labels: dict[str, str] | None = None,
    service_account: str | None = None,
) -> cloudbuild_v1.Build:
    """The Build ``gcloud builds submit --tag IMAGE --machine-type e2-highcpu-32`` sends; with
    ``service_account`` (``projects/P/serviceAccounts/EMAIL``), ``--service-account`` and the
    logging option Cloud Build then requires: it rejects a user-specified account without a
    logs bucket, the regional user-owned bucket or CLOUD_LOGGING_ONLY / NONE logging ("if
    'build.service_account' is specified, the build must either (a) specify
    'build.logs_bucket', ...", quoted in in28minutes/course-material#11)."""
    args = ["build", "--network", "cloudbuild", "--no-cache"]
    for key in sorted(build_args):
        args += ["--build-arg", f"{key}={build_args[key]}"]
    args += ["-t", image, "."]
    options = cloudbuild_v1.BuildOptions(
        machine_type=getattr(cloudbuild_v1.BuildOptions.MachineType, machine_type),
        logging=(
            cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY
            if service_account
            else cloudbuild_v1.BuildOptions.LoggingMode.LOGGING_UNSPECIFIED
        ),
    )
    build = cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(
            storage_source=cloudbuild_v1.StorageSource(
                bucket=source.bucket, object_=source.object_name, generation=source.generation
            )
        ),
        steps=[cloudbuild_v1.BuildStep(name=DOCKER_BUILDER, args=args)],
        images=[image],
        timeout=duration_pb2.Duration(seconds=timeout_seconds),
        options=options,
        tags=[f"{k}_{v}" for k, v in sorted((labels or {}).items())],
    )
    if service_account:
        build.service_account = service_account
    return build


def service_account_name(project: str, email: str) -> str:
    """The Build's ``serviceAccount``: ``projects/PROJECT/serviceAccounts/EMAIL``, PROJECT being
    the account's own for a user-managed account (``NAME@PROJECT.iam.gserviceaccount.com``)."""
    domain = email.partition("@")[2]
    owner = domain.removesuffix(".iam.gserviceaccount.com") if "iam.gservice" in domain else ""
    return f"projects/{owner or project}/serviceAccounts/{email}"


@task(name="build-image", cache_policy=NO_CACHE)
def build_image(
    cloud: GoogleCloud,
    source: StagedSource,
    image: str,
    build_args: dict[str, str],
    timeout_seconds: int,
    machine_type: str = "E2_HIGHCPU_32",
    labels: dict[str, str] | None = None,
    location: str = "global",
    service_account: str | None = None,
) -> BuiltImage:
    """Build and push ``image`` from ``source`` as ``service_account`` (an email; None: Cloud
    Build's default); waits for the build (its timeout plus 2 min)."""
    account = service_account_name(cloud.project, service_account) if service_account else None
    build = build_request(source, image, build_args, timeout_seconds, machine_type, labels, account)
    client = clients.cloud_build_client(cloud)
    with google_errors("run the Cloud Build build"):
        operation = client.create_build(
            request=cloudbuild_v1.CreateBuildRequest(
                parent=f"projects/{cloud.project}/locations/{location}", build=build
            )
        )
        started = operation.metadata.build
        get_run_logger().info("Cloud Build %s started; logs: %s", started.id, started.log_url)
        name = f"projects/{cloud.project}/locations/{location}/builds/{started.id}"
        finished = _wait_for_build(cloud, client, name, started, timeout_seconds + 120.0)
    built = _pushed_image(build, started, finished)
    get_run_logger().info("Built %s (%s)", built.image, built.digest)
    return built


def _wait_for_build(
    cloud: GoogleCloud,
    client: cloudbuild_v1.CloudBuildClient,
    name: str,
    started: cloudbuild_v1.Build,
    timeout_seconds: float,
) -> cloudbuild_v1.Build:
    """Poll the build until it is terminal; cancel it and fail after ``timeout_seconds``."""
    deadline = time.monotonic() + timeout_seconds
    current = started
    while current.status not in _TERMINAL:
        if time.monotonic() > deadline:
            client.cancel_build(request=cloudbuild_v1.CancelBuildRequest(name=name, id=started.id))
            raise BuildFailedError(
                f"Cloud Build {started.id} did not finish within {timeout_seconds:.0f} s "
                f"(cancelled). Logs: {started.log_url}"
            )
        time.sleep(POLL_INTERVAL_SECONDS)
        current = client.get_build(
            request=cloudbuild_v1.GetBuildRequest(name=name, id=started.id),
            retry=transient_retry(cloud),
        )
    return current


def _pushed_image(
    build: cloudbuild_v1.Build, started: cloudbuild_v1.Build, finished: cloudbuild_v1.Build
) -> BuiltImage:
    """The image a finished build pushed; BuildFailedError unless it succeeded and pushed it."""
    if finished.status != cloudbuild_v1.Build.Status.SUCCESS:
        status = cloudbuild_v1.Build.Status(finished.status).name
        raise BuildFailedError(
            f"Cloud Build {started.id} ended {status}: {finished.status_detail or 'no detail'}. "
            f"Logs: {finished.log_url or started.log_url}"
        )
    pushed = [i for i in finished.results.images if i.name in build.images]
    if not pushed:
        raise BuildFailedError(f"Cloud Build {started.id} succeeded but pushed no image")
    return BuiltImage(
        build_id=started.id,
        log_url=finished.log_url or started.log_url,
        image=pushed[0].name,
        digest=pushed[0].digest,
    )


@task(name="ensure-build-service-account", cache_policy=NO_CACHE)
def ensure_build_service_account(
    cloud: GoogleCloud, account: str, region: str, repository: str, bucket: str
) -> str:
    """The email builds run as. An email is the caller's own account, used as it is (it needs
    the three roles already; the Compute Engine default account has them only where Google's
    automatic Editor grant still applies). An account id is ours: created, and granted only
    what a build needs — the source bucket, the repository, the project's logs."""
    if "@" in account:
        return account
    email, _ = iam.ensure_service_account.fn(
        cloud, account, "Ollama on Cloud Run image builds", BUILD_ACCOUNT_PURPOSE
    )
    member = f"serviceAccount:{email}"
    granted = [
        storage.grant_bucket_role(cloud, bucket, SOURCE_ROLE, member) and SOURCE_ROLE,
        artifact_registry.grant_repository_role(cloud, region, repository, PUSH_ROLE, member)
        and PUSH_ROLE,
        iam.grant_project_role(cloud, LOGS_ROLE, member) and LOGS_ROLE,
    ]
    new = [role for role in granted if role]
    get_run_logger().info(
        "Builds run as %s (%s)", email, f"granted {', '.join(new)}" if new else "roles in place"
    )
    return email


@task(name="delete-build-service-account", cache_policy=NO_CACHE)
def delete_build_service_account(cloud: GoogleCloud, email: str) -> Deletion:
    """Its grants outside the repository (which teardown deletes with its policy) are removed —
    a deleted account's bindings would otherwise stay, as ``deleted:serviceAccount:...`` — then
    the account (already gone is success)."""
    member = {f"serviceAccount:{email}"}
    bucket = storage.staging_bucket_name(cloud.project)
    list_or_empty(lambda: [iam.revoke_project_members(cloud, member)])
    list_or_empty(lambda: [storage.revoke_bucket_members(cloud, bucket, member)])
    return iam.delete_service_account.fn(cloud, email)
