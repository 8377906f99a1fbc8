"""Cloud Build v1: builds from a `storageSource` tarball, global and regional.

Files: `spec` (statuses, checks, defaults), `docker` and `dockerfile` (what Docker would read),
`plan` (steps -> pushes or failure), `source` (the tarball in Cloud Storage), `identity` (the
build's service account: actAs at create; logs, source and push permissions while it runs),
`backend` (the state machine, no HTTP), `routes`.

A build is an explicit state machine on the emulator's clock: QUEUED at create, WORKING after a
third of `config.build_seconds`, then SUCCESS / FAILURE / TIMEOUT at `build_seconds` (a timer
finishes it even when nobody polls; polls and gets advance it too). Cancel ends it as CANCELLED.

What a build does (decided at create, applied when it finishes):
- fetch the source tarball from the emulated Cloud Storage, unpack it in memory;
- interpret `gcr.io/cloud-builders/docker` steps (`build`, `tag`, `push`); anything else fails
  the build loudly, naming the step;
- parse each Dockerfile with `dockerfile-parse`: missing, empty, no FROM stage, unknown
  instruction, instruction without arguments or a COPY/ADD source missing from the context fail
  the build as Docker would (USER_BUILD_STEP);
- on SUCCESS push every image in `images` to the emulated Artifact Registry (an untagged entry
  pushes every tag built for it, as Cloud Build's `docker push --all-tags`), with a digest over
  the context content and build args; the model baked into the image (`ARG`/`ENV MODEL`, with
  `--build-arg`) is recorded on the image. A missing repository fails the push (PUSH_FAILED);
- run as `serviceAccount` (default: the Compute Engine default account): a build whose account
  lacks a permission fails as Google fails it (`identity`);
- write the build log to `gs://<logsBucket or PROJECT_cloudbuild>/log-<id>.txt` (not with the
  CLOUD_LOGGING_ONLY / NONE logging options).
"""

from emulator.gcp.cloud_build.backend import CloudBuildBackend
from emulator.gcp.cloud_build.docker import parse_docker_args
from emulator.gcp.cloud_build.dockerfile import content_digest, inspect_dockerfile
from emulator.gcp.cloud_build.routes import routes
from emulator.gcp.cloud_build.source import unpack_source
from emulator.gcp.cloud_build.spec import SERVICE, StepFailure

__all__ = [
    "SERVICE",
    "CloudBuildBackend",
    "StepFailure",
    "content_digest",
    "inspect_dockerfile",
    "parse_docker_args",
    "routes",
    "unpack_source",
]
