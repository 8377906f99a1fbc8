"""Cloud Build: build the Ollama image from a staged tarball, as ``gcloud builds submit --tag``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from google.api_core import exceptions as gexc
from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.errors import BuildFailedError, translate_google_error
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


def run_build(
    cloud: GoogleCloud,
    build: cloudbuild_v1.Build,
    timeout_seconds: float,
    location: str = "global",
) -> BuiltImage:
    """Start the build, poll it until it is terminal (or ``timeout_seconds``), return the image."""
    client = clients.cloud_build_client(cloud)
    try:
        operation = client.create_build(
            request=cloudbuild_v1.CreateBuildRequest(
                parent=f"projects/{cloud.project}/locations/{location}", build=build
            )
        )
    except (gexc.Forbidden, gexc.BadRequest) as exc:
        raise translate_google_error(exc, "start the Cloud Build build") from exc
    started = operation.metadata.build
    build_name = f"projects/{cloud.project}/locations/{location}/builds/{started.id}"
    get_run_logger().info("Cloud Build %s started; logs: %s", started.id, started.log_url)
    deadline = time.monotonic() + timeout_seconds
    current = started
    while current.status not in _TERMINAL:
        if time.monotonic() > deadline:
            client.cancel_build(
                request=cloudbuild_v1.CancelBuildRequest(name=build_name, id=started.id)
            )
            raise BuildFailedError(
                f"Cloud Build {started.id} did not finish within {timeout_seconds:.0f} s "
                f"(cancelled). Logs: {started.log_url}"
            )
        time.sleep(POLL_INTERVAL_SECONDS)
        current = client.get_build(
            request=cloudbuild_v1.GetBuildRequest(name=build_name, id=started.id),
            retry=transient_retry(),
        )
    if current.status != cloudbuild_v1.Build.Status.SUCCESS:
        status = cloudbuild_v1.Build.Status(current.status).name
        raise BuildFailedError(
            f"Cloud Build {started.id} ended {status}: {current.status_detail or 'no detail'}. "
            f"Logs: {current.log_url or started.log_url}"
        )
    pushed = [i for i in current.results.images if i.name in build.images]
    if not pushed:
        raise BuildFailedError(f"Cloud Build {started.id} succeeded but pushed no image")
    return BuiltImage(
        build_id=started.id,
        log_url=current.log_url or started.log_url,
        image=pushed[0].name,
        digest=pushed[0].digest,
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
) -> BuiltImage:
    request = build_request(source, image, build_args, timeout_seconds, machine_type, labels)
    built = run_build(cloud, request, timeout_seconds=timeout_seconds + 120)
    get_run_logger().info("Built %s (%s)", built.image, built.digest)
    return built
