"""Cloud Build: build the Ollama image from a staged tarball, as ``gcloud builds submit --tag``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.errors import BuildFailedError, google_errors
from tasks.retries import transient_retry
from tasks.storage import StagedSource

DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
# The image's build context, shipped with the package (a symlink to ollama-backend/ in the source
# tree, real files in the wheel), so `pip install .` alone can deploy.
BUILD_CONTEXT = Path(__file__).resolve().parent / "ollama_backend"
POLL_INTERVAL_SECONDS = 1.0
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
) -> cloudbuild_v1.Build:
    """The Build ``gcloud builds submit --tag IMAGE --machine-type e2-highcpu-32`` sends."""
    args = ["build", "--network", "cloudbuild", "--no-cache"]
    for key in sorted(build_args):
        args += ["--build-arg", f"{key}={build_args[key]}"]
    args += ["-t", image, "."]
    return cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(
            storage_source=cloudbuild_v1.StorageSource(
                bucket=source.bucket, object_=source.object_name, generation=source.generation
            )
        ),
        steps=[cloudbuild_v1.BuildStep(name=DOCKER_BUILDER, args=args)],
        images=[image],
        timeout=duration_pb2.Duration(seconds=timeout_seconds),
        options=cloudbuild_v1.BuildOptions(
            machine_type=getattr(cloudbuild_v1.BuildOptions.MachineType, machine_type)
        ),
        tags=[f"{k}_{v}" for k, v in sorted((labels or {}).items())],
    )


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
) -> BuiltImage:
    """Build and push ``image`` from ``source``; waits for the build (its timeout plus 2 min)."""
    build = build_request(source, image, build_args, timeout_seconds, machine_type, labels)
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
