"""Cloud Build v1: statuses, limits, and the checks and defaults of a new build. Pure."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2

from emulator.gcp.errors import GoogleApiError, invalid_argument
from emulator.gcp.projects import project_number
from emulator.gcp.protojson import parse_message

SERVICE = "cloudbuild.googleapis.com"
Build = cloudbuild_v1.Build
Status = cloudbuild_v1.Build.Status
FailureType = cloudbuild_v1.Build.FailureInfo.FailureType
QUEUED, WORKING, SUCCESS, FAILURE = Status(1), Status(2), Status(3), Status(4)
TIMEOUT, CANCELLED = Status(6), Status(7)

DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
DEFAULT_TIMEOUT_SECONDS = 3600
MAX_TIMEOUT_SECONDS = 24 * 3600
Options = cloudbuild_v1.BuildOptions
# Google's 400 for a user-specified service account with nowhere for its logs to go, verbatim
# as quoted in GoogleCloudPlatform/terraform-google-dataplex-auto-data-quality#39 and
# in28minutes/course-material#11 ("...: invalid argument").
LOGGING_OPTION_REQUIRED = (
    "if 'build.service_account' is specified, the build must either (a) specify "
    "'build.logs_bucket', (b) use the REGIONAL_USER_OWNED_BUCKET "
    "build.options.default_logs_bucket_behavior option, or (c) use either CLOUD_LOGGING_ONLY / "
    "NONE logging options"
)
NO_LOGS_BUCKET = {Options.LoggingMode.CLOUD_LOGGING_ONLY, Options.LoggingMode.NONE}
TERMINAL = {
    Status.SUCCESS,
    Status.FAILURE,
    Status.INTERNAL_ERROR,
    Status.TIMEOUT,
    Status.CANCELLED,
    Status.EXPIRED,
}


class StepFailure(Exception):
    """A build step (or the push) failed; `failure_type` is Build.FailureInfo.FailureType."""

    def __init__(self, message: str, failure_type: int = FailureType.USER_BUILD_STEP) -> None:
        super().__init__(message)
        self.message = message
        self.failure_type = failure_type


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Cloud Build substitutions: `$VAR` / `${VAR}` for known keys; `$$` is a literal `$`."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        key = m.group(1) or m.group(2)
        return values.get(key, m.group(0))

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


def validate_build(build: Build) -> None:
    """Google's INVALID_ARGUMENTs on CreateBuild."""
    if not build.steps:
        raise invalid_argument("invalid build: no build steps")
    machine = int(build.options.machine_type)
    known = cloudbuild_v1.BuildOptions.MachineType.__members__.values()
    if machine not in {int(m) for m in known}:
        raise invalid_argument(
            f"Invalid value at 'build.options.machine_type' (type.googleapis.com/"
            f"google.devtools.cloudbuild.v1.BuildOptions.MachineType), {machine}"
        )
    timeout = build.timeout.total_seconds() if build.timeout else DEFAULT_TIMEOUT_SECONDS
    if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise invalid_argument(f"invalid build: timeout {timeout:g}s must be between 1s and 24h")
    for image in build.images:
        if not image.strip():
            raise invalid_argument("invalid build: empty image name in images")
    for i, step in enumerate(build.steps):
        if not step.name:
            raise invalid_argument(f"invalid build: build step {i} must specify a name")
    regional = Options.DefaultLogsBucketBehavior.REGIONAL_USER_OWNED_BUCKET
    if (
        build.service_account
        and not build.logs_bucket
        and build.options.logging not in NO_LOGS_BUCKET
        and build.options.default_logs_bucket_behavior != regional
    ):
        raise invalid_argument(LOGGING_OPTION_REQUIRED)


def new_build(project: str, location: str, body: Mapping[str, Any]) -> Build:
    """A validated build as Cloud Build queues it: id, name, substitutions applied, defaults set
    (create time and status are set when it is queued)."""
    build = parse_message(Build, dict(body))
    validate_build(build)
    build_id = str(uuid.uuid4())
    number = project_number(project)
    subs = {
        "PROJECT_ID": project,
        "PROJECT_NUMBER": str(number),
        "BUILD_ID": build_id,
        "LOCATION": location,
        **dict(build.substitutions),
    }
    for step in build.steps:
        step.args[:] = [substitute(a, subs) for a in step.args]
    build.images[:] = [substitute(i, subs) for i in build.images]
    build.id = build_id
    build.name = f"projects/{number}/locations/{location}/builds/{build_id}"
    build.project_id = project
    if not build.timeout:
        build.timeout = duration_pb2.Duration(seconds=DEFAULT_TIMEOUT_SECONDS)
    if not build.queue_ttl:
        build.queue_ttl = duration_pb2.Duration(seconds=3600)
    if not build.logs_bucket and build.options.logging not in NO_LOGS_BUCKET:
        build.logs_bucket = f"gs://{project}_cloudbuild"
    if not build.service_account:
        build.service_account = (
            f"projects/{project}/serviceAccounts/{number}-compute@developer.gserviceaccount.com"
        )
    region = "" if location == "global" else f";region={location}"
    build.log_url = (
        f"https://console.cloud.google.com/cloud-build/builds{region}/{build_id}?project={number}"
    )
    return build


def operation_error(build: Build) -> GoogleApiError:
    status = build.status
    if status == Status.CANCELLED:
        return GoogleApiError(499, "CANCELLED", "Build was cancelled")
    if status == Status.TIMEOUT:
        return GoogleApiError(504, "DEADLINE_EXCEEDED", "Build timeout")
    detail = build.status_detail or Status(status).name
    return GoogleApiError(500, "UNKNOWN", f"Build failed; check build logs for details: {detail}")
