"""Cloud Build v1: builds from a `storageSource` tarball, global and regional.

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
- write the build log to `gs://<logsBucket or PROJECT_cloudbuild>/log-<id>.txt`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import posixpath
import re
import shlex
import tarfile
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx
from dockerfile_parse import DockerfileParser
from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2

from emulator.gcp.core import (
    Call,
    GoogleApiError,
    Outcome,
    Route,
    invalid_argument,
    message_to_json,
    not_found,
    parse_message,
    project_number,
)

if TYPE_CHECKING:
    from emulator.gcp.core import Emulator

SERVICE = "cloudbuild.googleapis.com"
Build = cloudbuild_v1.Build
Status = cloudbuild_v1.Build.Status
FailureType = cloudbuild_v1.Build.FailureInfo.FailureType
QUEUED, WORKING, SUCCESS, FAILURE = Status(1), Status(2), Status(3), Status(4)
TIMEOUT, CANCELLED = Status(6), Status(7)

DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
DEFAULT_TIMEOUT_SECONDS = 3600
MAX_TIMEOUT_SECONDS = 24 * 3600
TERMINAL = {
    Status.SUCCESS,
    Status.FAILURE,
    Status.INTERNAL_ERROR,
    Status.TIMEOUT,
    Status.CANCELLED,
    Status.EXPIRED,
}
KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


class StepFailure(Exception):
    """A build step (or the push) failed; `failure_type` is Build.FailureInfo.FailureType."""

    def __init__(self, message: str, failure_type: int = FailureType.USER_BUILD_STEP) -> None:
        super().__init__(message)
        self.message = message
        self.failure_type = failure_type


# ---------------------------------------------------------------------------------------------
# Pure pieces: source tarball, docker command lines, Dockerfiles, image references.


def unpack_source(data: bytes) -> dict[str, bytes]:
    """A source tarball (gzip or plain) as {relative path: content} for regular files."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            files: dict[str, bytes] = {}
            for member in tar.getmembers():
                name = posixpath.normpath(member.name.lstrip("/"))
                if not member.isfile() or name.startswith("..") or name == ".":
                    continue
                extracted = tar.extractfile(member)
                files[name] = extracted.read() if extracted is not None else b""
            return files
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StepFailure(
            f"failed to unpack the source archive: {exc}", FailureType.FETCH_SOURCE_FAILED
        ) from exc


@dataclass(frozen=True)
class DockerBuild:
    """`docker build [options] CONTEXT` as Cloud Build runs it in `/workspace`."""

    tags: tuple[str, ...]
    build_args: dict[str, str]
    dockerfile: str  # workspace-relative path
    context: str  # workspace-relative directory ("." = the workspace)
    target: str | None = None


@dataclass(frozen=True)
class DockerTag:
    source: str
    target: str


@dataclass(frozen=True)
class DockerPush:
    image: str
    all_tags: bool


DockerCommand = DockerBuild | DockerTag | DockerPush

_BUILD_VALUE_FLAGS = {
    "-t": "tag", "--tag": "tag", "--build-arg": "build-arg", "-f": "file", "--file": "file",
    "--network": None, "--platform": None, "--target": "target", "--cache-from": None,
    "--label": None, "--progress": None, "--iidfile": None, "--add-host": None, "--shm-size": None,
    "-m": None, "--memory": None, "--secret": None, "--ssh": None, "--output": None, "-o": None,
}  # fmt: skip
_BUILD_BOOL_FLAGS = {"--no-cache", "--pull", "-q", "--quiet", "--rm", "--force-rm", "--squash"}


def _workspace_path(cwd: str, path: str) -> str:
    joined = posixpath.normpath(posixpath.join(cwd, path.removeprefix("/workspace/")))
    if joined.startswith(".."):
        raise StepFailure(f"path {path!r} is outside the workspace /workspace")
    return joined


def parse_docker_args(
    args: Sequence[str], env: Mapping[str, str] | None = None, cwd: str = "."
) -> DockerCommand:
    """Interpret the arguments of a `gcr.io/cloud-builders/docker` step (Docker's own errors)."""
    env = env or {}
    if not args:
        raise StepFailure('"docker" requires a command; the emulator runs build, tag and push')
    command, rest = args[0], list(args[1:])
    if command == "build" or (command == "buildx" and rest[:1] == ["build"]):
        return _parse_docker_build(rest if command == "build" else rest[1:], env, cwd)
    if command == "tag":
        if len(rest) != 2:
            raise StepFailure('"docker tag" requires exactly 2 arguments.')
        return DockerTag(rest[0], rest[1])
    if command == "push":
        all_tags = any(a in ("-a", "--all-tags") for a in rest)
        images = [a for a in rest if not a.startswith("-")]
        if len(images) != 1:
            raise StepFailure('"docker push" requires exactly 1 argument.')
        return DockerPush(images[0], all_tags)
    raise StepFailure(f"emulator.gcp runs only docker build, tag and push; not 'docker {command}'")


def _parse_docker_build(args: list[str], env: Mapping[str, str], cwd: str) -> DockerBuild:
    tags: list[str] = []
    build_args: dict[str, str] = {}
    dockerfile: str | None = None
    target: str | None = None
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        if arg.startswith("-") and flag in _BUILD_VALUE_FLAGS:
            if eq:
                value = inline
            else:
                if i + 1 >= len(args):
                    raise StepFailure(f"flag needs an argument: {flag}")
                i += 1
                value = args[i]
            kind = _BUILD_VALUE_FLAGS[flag]
            if kind == "tag":
                tags.append(value)
            elif kind == "file":
                dockerfile = value
            elif kind == "target":
                target = value
            elif kind == "build-arg":
                key, has_value, val = value.partition("=")
                if has_value:
                    build_args[key] = val
                elif key in env:
                    build_args[key] = env[key]
        elif arg in _BUILD_BOOL_FLAGS:
            pass
        elif arg.startswith("-") and arg != "-":
            raise StepFailure(f"unknown flag: {flag}")
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 1:
        raise StepFailure('"docker build" requires exactly 1 argument.')
    context = _workspace_path(cwd, positional[0])
    file_path = (
        _workspace_path(cwd, dockerfile)
        if dockerfile
        else posixpath.normpath(posixpath.join(context, "Dockerfile"))
    )
    return DockerBuild(tuple(tags), build_args, file_path, context, target)


@dataclass(frozen=True)
class DockerfileInfo:
    base_image: str
    model: str | None
    env: dict[str, str]
    instructions: int


def _instruction_tokens(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            import json

            parsed = json.loads(value)
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
        except ValueError:
            pass
    try:
        return shlex.split(value)
    except ValueError:
        return value.split()


def _context_has(files: Mapping[str, bytes], context: str, source: str) -> bool:
    pattern = posixpath.normpath(posixpath.join(context, source.lstrip("/")))
    if pattern == ".":
        return True
    for path in files:
        if fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
            return True
        # A glob that names a directory ("dir*") copies what is under it.
        parts = path.split("/")
        for n in range(1, len(parts)):
            if fnmatch.fnmatchcase("/".join(parts[:n]), pattern):
                return True
    return False


def inspect_dockerfile(
    text: str,
    build_args: Mapping[str, str],
    files: Mapping[str, bytes],
    context: str = ".",
    name: str = "Dockerfile",
) -> DockerfileInfo:
    """Validate a Dockerfile as `docker build` would and read its final stage's MODEL."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()), build_args=dict(build_args))
    structure = parser.structure
    if not structure:
        raise StepFailure(f"the Dockerfile ({name}) cannot be empty")
    seen_from = False
    for instr in structure:
        keyword = str(instr["instruction"]).upper()
        line = int(instr["startline"]) + 1
        value = str(instr["value"]).strip()
        if keyword == "COMMENT":
            continue
        if keyword not in KNOWN_INSTRUCTIONS:
            raise StepFailure(f"Dockerfile parse error line {line}: unknown instruction: {keyword}")
        if not value:
            raise StepFailure(
                f"Dockerfile parse error line {line}: {keyword} requires at least one argument"
            )
        if keyword == "FROM":
            seen_from = True
            if len(value.split()) not in (1, 3):
                raise StepFailure(
                    f"Dockerfile parse error line {line}: FROM requires either one or three "
                    "arguments"
                )
        elif keyword != "ARG" and not seen_from:
            raise StepFailure(
                f"Dockerfile parse error line {line}: no build stage in current context "
                f"({keyword} before the first FROM)"
            )
        elif keyword in ("COPY", "ADD"):
            tokens = [t for t in _instruction_tokens(value) if not t.startswith("--")]
            if any(t.startswith("--from") for t in _instruction_tokens(value)):
                continue
            if len(tokens) < 2:
                raise StepFailure(
                    f"Dockerfile parse error line {line}: {keyword} requires at least two arguments"
                )
            for source in tokens[:-1]:
                if keyword == "ADD" and re.match(r"^[a-z]+://", source):
                    continue
                if not _context_has(files, context, source):
                    raise StepFailure(
                        f"{keyword} failed: file not found in build context or excluded by "
                        f".dockerignore: stat {source}: file does not exist"
                    )
    if not seen_from:
        raise StepFailure("dockerfile contains no stages to build (no FROM instruction)")
    envs = dict(parser.envs)
    args = dict(parser.args)
    model = envs.get("MODEL") or args.get("MODEL") or None
    return DockerfileInfo(
        base_image=str(parser.baseimage or ""),
        model=model,
        env=envs,
        instructions=len(structure),
    )


def content_digest(
    files: Mapping[str, bytes], context: str, dockerfile: str, build_args: Mapping[str, str]
) -> str:
    """A docker-style content digest: the context's files, the Dockerfile and the build args."""
    h = hashlib.sha256()
    prefix = "" if context == "." else context.rstrip("/") + "/"
    for path in sorted(files):
        if path.startswith(prefix) or path == dockerfile:
            h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    for key in sorted(build_args):
        h.update(f"--build-arg\0{key}\0{build_args[key]}\0".encode())
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class ImageRef:
    """`LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE[:TAG][@sha256:...]`."""

    location: str
    project: str
    repository: str
    image: str
    tag: str | None
    digest: str | None

    @property
    def base(self) -> str:
        return f"{self.location}-docker.pkg.dev/{self.project}/{self.repository}/{self.image}"


def parse_image_ref(ref: str) -> ImageRef:
    rest, _, digest = ref.partition("@")
    host, _, path = rest.partition("/")
    tag: str | None = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
    parts = path.split("/")
    if not host.endswith("-docker.pkg.dev") or len(parts) < 3 or not all(parts):
        raise ValueError(
            f"{ref!r} is not an Artifact Registry Docker image "
            "(LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE[:TAG])"
        )
    return ImageRef(
        location=host.removesuffix("-docker.pkg.dev"),
        project=parts[0],
        repository=parts[1],
        image="/".join(parts[2:]),
        tag=tag,
        digest=digest or None,
    )


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Cloud Build substitutions: `$VAR` / `${VAR}` for known keys; `$$` is a literal `$`."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        key = m.group(1) or m.group(2)
        return values.get(key, m.group(0))

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


# ---------------------------------------------------------------------------------------------
# Running a build's steps (pure: files in, plan out).


@dataclass
class PushPlan:
    ref: str  # what is pushed, as presented to `docker push`
    location: str
    project: str
    repository: str
    image: str
    tags: list[str]
    digest: str
    model: str | None
    env: dict[str, str]


@dataclass
class BuildPlan:
    """What a build will do when it finishes: the pushes, or the failure; and its log."""

    pushes: list[PushPlan] = field(default_factory=list)
    failure: str | None = None
    failure_type: int = 0
    failed_step: int | None = None
    log: list[str] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> BuildPlan:
        pushes = [PushPlan(**p) for p in data.get("pushes", [])]
        return cls(**{**data, "pushes": pushes})


@dataclass
class _Built:
    digest: str
    model: str | None
    env: dict[str, str]


def plan_build(build: Build, files: Mapping[str, bytes]) -> BuildPlan:
    """Run the docker steps over the unpacked source; never raises for user errors."""
    plan = BuildPlan()
    built: dict[str, _Built] = {}  # full reference (with tag) -> image
    for index, step in enumerate(build.steps):
        plan.log.append(f"Starting Step #{index}")
        try:
            _run_step(step, files, built, plan, index)
        except StepFailure as exc:
            plan.log.append(f"Step #{index}: {exc.message}")
            plan.log.append(f"Finished Step #{index}")
            plan.failure = (
                f'Build step failure: build step {index} "{step.name}" failed: {exc.message}'
            )
            plan.failure_type = int(exc.failure_type)
            plan.failed_step = index
            return plan
        plan.log.append(f"Finished Step #{index}")
    try:
        plan.pushes.extend(_pushes_for_images(list(build.images), built))
    except StepFailure as exc:
        plan.failure, plan.failure_type = exc.message, int(exc.failure_type)
        plan.log.append(f"ERROR: {exc.message}")
    return plan


def _with_tag(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last or "@" in ref else f"{ref}:latest"


def _run_step(
    step: cloudbuild_v1.BuildStep,
    files: Mapping[str, bytes],
    built: dict[str, _Built],
    plan: BuildPlan,
    index: int,
) -> None:
    name = step.name.split("@", 1)[0]
    if name.rsplit(":", 1)[0] not in (DOCKER_BUILDER, "docker") or step.entrypoint not in (
        "",
        "docker",
    ):
        raise StepFailure(
            f"emulator.gcp cannot run build step image {step.name!r} (entrypoint "
            f"{step.entrypoint or 'default'!r}); it runs {DOCKER_BUILDER} build, tag and push"
        )
    if step.script:
        raise StepFailure("emulator.gcp cannot run build step scripts")
    env = dict(e.split("=", 1) for e in step.env if "=" in e)
    command = parse_docker_args(list(step.args), env, cwd=step.dir or ".")
    if isinstance(command, DockerBuild):
        if command.dockerfile not in files:
            raise StepFailure(
                "unable to prepare context: unable to evaluate symlinks in Dockerfile path: "
                f"lstat /workspace/{command.dockerfile}: no such file or directory"
            )
        try:
            text = files[command.dockerfile].decode()
        except UnicodeDecodeError as exc:
            raise StepFailure(f"the Dockerfile ({command.dockerfile}) is not UTF-8") from exc
        info = inspect_dockerfile(
            text, command.build_args, files, command.context, command.dockerfile
        )
        digest = content_digest(files, command.context, command.dockerfile, command.build_args)
        plan.log.append(f"Step #{index}: Step 1/{info.instructions} : FROM {info.base_image}")
        if info.model:
            plan.log.append(f"Step #{index}: model baked into the image: {info.model}")
        plan.log.append(f"Step #{index}: Successfully built {digest[7:19]}")
        for tag in command.tags:
            built[_with_tag(tag)] = _Built(digest, info.model, info.env)
            plan.log.append(f"Step #{index}: Successfully tagged {_with_tag(tag)}")
    elif isinstance(command, DockerTag):
        source = built.get(_with_tag(command.source))
        if source is None:
            raise StepFailure(f"Error response from daemon: No such image: {command.source}")
        built[_with_tag(command.target)] = source
    else:
        plan.pushes.extend(_pushes_for_images([command.image], built, all_tags=command.all_tags))


def _pushes_for_images(
    images: Sequence[str], built: Mapping[str, _Built], all_tags: bool = False
) -> list[PushPlan]:
    pushes: list[PushPlan] = []
    missing: list[str] = []
    for image in images:
        has_tag = _with_tag(image) == image
        if has_tag and not all_tags:
            refs = [image] if image in built else []
        else:
            refs = sorted(r for r in built if r.rsplit(":", 1)[0] == image.rsplit(":", 1)[0])
        if not refs:
            missing.append(image)
            continue
        by_digest: dict[str, list[str]] = {}
        for ref in refs:
            by_digest.setdefault(built[ref].digest, []).append(ref)
        for digest, tagged in by_digest.items():
            try:
                parsed = parse_image_ref(tagged[0])
            except ValueError as exc:
                raise StepFailure(str(exc), FailureType.PUSH_FAILED) from exc
            pushes.append(
                PushPlan(
                    ref=image,
                    location=parsed.location,
                    project=parsed.project,
                    repository=parsed.repository,
                    image=parsed.image,
                    tags=[parse_image_ref(r).tag or "latest" for r in tagged],
                    digest=digest,
                    model=built[tagged[0]].model,
                    env=built[tagged[0]].env,
                )
            )
    if missing:
        raise StepFailure(
            "failed to find one or more images after execution of build steps: "
            f"[{' '.join(missing)}]",
            FailureType.PUSH_IMAGE_NOT_FOUND,
        )
    return pushes


# ---------------------------------------------------------------------------------------------
# Cloud Storage (the emulator's fake-gcs-server) as the build sees it.


class BuildStorage(Protocol):
    def fetch(self, bucket: str, name: str, generation: int | None) -> bytes: ...

    def write(self, bucket: str, name: str, data: bytes, project: str) -> None: ...


class GcsHttpStorage:
    """Reads sources and writes logs through fake-gcs-server's JSON API."""

    def __init__(self, base_url: Callable[[], str | None]) -> None:
        self._base_url = base_url

    def _url(self) -> str:
        url = self._base_url()
        if not url:
            raise GoogleApiError(
                500, "INTERNAL", "emulator.gcp has no Cloud Storage (config.storage_url is unset)"
            )
        return url.rstrip("/")

    def fetch(self, bucket: str, name: str, generation: int | None) -> bytes:
        params: dict[str, str] = {"alt": "media"}
        if generation:
            params["generation"] = str(generation)
        url = f"{self._url()}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        response = httpx.get(url, params=params, timeout=60)
        if response.status_code == 404:
            what = "object" if self._bucket_exists(bucket) else "bucket"
            raise invalid_argument(
                f"could not resolve source: googleapi: Error 404: The specified {what} does not "
                f"exist., notFound (gs://{bucket}/{name})"
            )
        response.raise_for_status()
        return response.content

    def _bucket_exists(self, bucket: str) -> bool:
        r = httpx.get(f"{self._url()}/storage/v1/b/{quote(bucket, safe='')}", timeout=30)
        return r.status_code == 200

    def write(self, bucket: str, name: str, data: bytes, project: str) -> None:
        if not self._bucket_exists(bucket):
            r = httpx.post(
                f"{self._url()}/storage/v1/b", params={"project": project}, json={"name": bucket}
            )
            if r.status_code not in (200, 409):
                r.raise_for_status()
        r = httpx.post(
            f"{self._url()}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
            params={"uploadType": "media", "name": name},
            content=data,
            headers={"Content-Type": "text/plain; charset=utf-8"},
            timeout=60,
        )
        r.raise_for_status()


# ---------------------------------------------------------------------------------------------
# The backend.


@dataclass
class BuildRecord:
    build: Build
    location: str
    operation: str
    plan: BuildPlan
    queued_at: float
    start_at: float
    finish_at: float
    timeout_at: float
    applied: bool = False

    def to_state(self) -> dict[str, Any]:
        return {
            "build": message_to_json(self.build),
            "location": self.location,
            "operation": self.operation,
            "plan": self.plan.to_state(),
            "queued_at": self.queued_at,
            "start_at": self.start_at,
            "finish_at": self.finish_at,
            "timeout_at": self.timeout_at,
            "applied": self.applied,
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> BuildRecord:
        return cls(
            build=parse_message(Build, data["build"]),
            location=data["location"],
            operation=data["operation"],
            plan=BuildPlan.from_state(data["plan"]),
            queued_at=data["queued_at"],
            start_at=data["start_at"],
            finish_at=data["finish_at"],
            timeout_at=data["timeout_at"],
            applied=data["applied"],
        )


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


class CloudBuildBackend:
    """Builds by project, location and id. Knows nothing of HTTP."""

    def __init__(self, emulator: Emulator, storage: BuildStorage | None = None) -> None:
        self._emulator = emulator
        self.storage: BuildStorage = storage or GcsHttpStorage(lambda: emulator.config.storage_url)
        self._builds: dict[tuple[str, str, str], BuildRecord] = {}
        self._timers: list[threading.Timer] = []
        self._closed = False

    # -- API --------------------------------------------------------------------------------

    def create_build(
        self, project: str, location: str, body: Mapping[str, Any], caller: str | None = None
    ) -> dict[str, Any]:
        """Validate and queue a build; returns the operation's first JSON."""
        build = parse_message(Build, dict(body))
        self._validate(build)
        clock = self._emulator.clock
        now = clock()
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
        build.status = QUEUED
        build.create_time = _ts(now)
        if not build.timeout:
            build.timeout = duration_pb2.Duration(seconds=DEFAULT_TIMEOUT_SECONDS)
        if not build.queue_ttl:
            build.queue_ttl = duration_pb2.Duration(seconds=3600)
        if not build.logs_bucket:
            build.logs_bucket = f"gs://{project}_cloudbuild"
        if not build.service_account:
            build.service_account = (
                f"projects/{project}/serviceAccounts/{number}-compute@developer.gserviceaccount.com"
            )
        region = "" if location == "global" else f";region={location}"
        build.log_url = (
            f"https://console.cloud.google.com/cloud-build/builds{region}/{build_id}"
            f"?project={number}"
        )
        plan = self._plan(build, project)
        now = clock()  # the source fetch above took time: the build is queued from here
        build.create_time = _ts(now)
        seconds = self._emulator.config.build_seconds
        timeout = build.timeout.total_seconds()
        record = BuildRecord(
            build=build,
            location=location,
            operation=(
                f"operations/build/{project}/{base64.b64encode(build_id.encode()).decode()}"
                if location == "global"
                else f"projects/{project}/locations/{location}/operations/{build_id}"
            ),
            plan=plan,
            queued_at=now,
            start_at=now + seconds / 3,
            finish_at=now + seconds,
            timeout_at=now + seconds / 3 + timeout,
        )
        self._builds[(project, location, build_id)] = record
        op = self._register_operation(record)
        self._schedule(record)
        return op

    def get_build(self, project: str, location: str, build_id: str) -> Build:
        record = self._record(project, location, build_id)
        self._advance(record)
        return record.build

    def list_builds(
        self, project: str, location: str, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        records = [r for (p, loc, _), r in self._builds.items() if p == project and loc == location]
        for record in records:
            self._advance(record)
        records.sort(key=lambda r: r.queued_at, reverse=True)
        start = int(page_token) if page_token.isdigit() else 0
        size = page_size if 0 < page_size <= 1000 else 100
        page = records[start : start + size]
        out: dict[str, Any] = {"builds": [message_to_json(r.build) for r in page]}
        if start + size < len(records):
            out["nextPageToken"] = str(start + size)
        return out

    def cancel_build(self, project: str, location: str, build_id: str) -> Build:
        record = self._record(project, location, build_id)
        self._advance(record)
        if record.build.status not in TERMINAL:
            now = self._emulator.clock()
            record.build.status = CANCELLED
            record.build.finish_time = _ts(now)
            if not record.build.start_time:
                record.build.start_time = _ts(now)
            record.applied = True
            record.plan.log.append("CANCELLED")
            self._write_log(record)
        return record.build

    # -- state machine ------------------------------------------------------------------------

    def _record(self, project: str, location: str, build_id: str) -> BuildRecord:
        record = self._builds.get((project, location, build_id))
        if record is None:
            raise not_found(f"Requested entity was not found. (build {build_id})")
        return record

    def _validate(self, build: Build) -> None:
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
            raise invalid_argument(
                f"invalid build: timeout {timeout:g}s must be between 1s and 24h"
            )
        for image in build.images:
            if not image.strip():
                raise invalid_argument("invalid build: empty image name in images")
        for i, step in enumerate(build.steps):
            if not step.name:
                raise invalid_argument(f"invalid build: build step {i} must specify a name")

    def _plan(self, build: Build, project: str) -> BuildPlan:
        log = [f'starting build "{build.id}"', "", "FETCHSOURCE"]
        files: dict[str, bytes] = {}
        source = build.source.storage_source
        if source.bucket:
            uri = f"gs://{source.bucket}/{source.object_}"
            log.append(f"Fetching storage object: {uri}#{source.generation or ''}".rstrip("#"))
            data = self.storage.fetch(source.bucket, source.object_, source.generation or None)
            build.source_provenance.resolved_storage_source = cloudbuild_v1.StorageSource(
                bucket=source.bucket,
                object_=source.object_,
                generation=source.generation or 1,
            )
            try:
                files = unpack_source(data)
            except StepFailure as exc:
                plan = BuildPlan(failure=exc.message, failure_type=int(exc.failure_type))
                plan.log = [*log, f"ERROR: {exc.message}"]
                return plan
        elif build.source:
            raise invalid_argument(
                "emulator.gcp builds only from source.storageSource (a tarball in Cloud Storage)"
            )
        plan = plan_build(build, files)
        plan.log = [*log, "BUILD", *plan.log]
        return plan

    def _register_operation(self, record: BuildRecord) -> dict[str, Any]:
        def metadata() -> cloudbuild_v1.BuildOperationMetadata:
            self._advance(record)
            return cloudbuild_v1.BuildOperationMetadata(build=record.build)

        def resolve() -> Outcome | None:
            self._advance(record)
            status = record.build.status
            if status not in TERMINAL:
                return None
            if status == Status.SUCCESS:
                return record.build, None
            return None, _operation_error(record.build)

        return self._emulator.operations.create(
            record.operation,
            metadata,
            resolve=resolve,
            polls_until_done=self._emulator.config.operation_polls,
        )

    def _schedule(self, record: BuildRecord) -> None:
        delay = max(0.0, min(record.finish_at, record.timeout_at) - self._emulator.clock())
        if self._closed or delay <= 0:
            self._advance(record)
            return
        timer = threading.Timer(delay + 0.01, self._on_timer, args=(record,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _on_timer(self, record: BuildRecord) -> None:
        with self._emulator.lock:
            if self._closed:
                return
            self._advance(record)
            self._emulator.save()

    def _advance(self, record: BuildRecord) -> None:
        if record.applied:
            return
        now = self._emulator.clock()
        build = record.build
        if now >= record.start_at and build.status == Status.QUEUED:
            build.status = WORKING
            build.start_time = _ts(record.start_at)
        if now >= record.timeout_at and record.timeout_at < record.finish_at:
            self._finish(record, Status.TIMEOUT, record.timeout_at)
        elif now >= record.finish_at:
            self._finish(record, None, record.finish_at)

    def _finish(self, record: BuildRecord, status: int | None, at: float) -> None:
        build, plan = record.build, record.plan
        record.applied = True
        build.start_time = build.start_time or _ts(record.start_at)
        build.finish_time = _ts(at)
        if status == Status.TIMEOUT:
            build.status = TIMEOUT
            build.status_detail = "Build timed out"
            plan.log.append("ERROR: context deadline exceeded (build timeout)")
        elif plan.failure is None:
            self._push(record)
        if plan.failure is not None and status is None:
            build.status = FAILURE
            build.status_detail = plan.failure
            build.failure_info = Build.FailureInfo(type_=plan.failure_type, detail=plan.failure)
            plan.log += ["ERROR", f"ERROR: {plan.failure}"]
        elif status is None:
            build.status = SUCCESS
            plan.log.append("DONE")
        for i, step in enumerate(build.steps):
            failed = plan.failed_step is not None and i == plan.failed_step
            skipped = plan.failed_step is not None and i > plan.failed_step
            if build.status == Status.SUCCESS or not (failed or skipped):
                step.status = SUCCESS
            elif failed:
                step.status = FAILURE
            else:
                step.status = QUEUED
            step.timing = cloudbuild_v1.TimeSpan(start_time=_ts(record.start_at), end_time=_ts(at))
        self._write_log(record)

    def _push(self, record: BuildRecord) -> None:
        build, plan = record.build, record.plan
        registry = self._emulator.artifact_registry
        plan.log.append("PUSH")
        for push in plan.pushes:
            plan.log.append(f"Pushing {push.ref}")
            metadata = {"model": push.model or "", "buildId": build.id}
            try:
                registry.push_image(
                    push.project,
                    push.location,
                    push.repository,
                    push.image,
                    push.tags,
                    push.digest,
                    metadata,
                )
            except GoogleApiError as exc:
                repo = push.repository
                plan.failure = (
                    f'failed to push {push.ref}: name unknown: Repository "{repo}" not found'
                    if exc.http_status == 404
                    else f"failed to push {push.ref}: {exc.message}"
                )
                plan.failure_type = int(FailureType.PUSH_FAILED)
                return
            for tag in push.tags:
                plan.log.append(f"{tag}: digest: {push.digest}")
            build.results.images.append(
                cloudbuild_v1.BuiltImage(
                    name=push.ref,
                    digest=push.digest,
                    artifact_registry_package=(
                        f"projects/{push.project}/locations/{push.location}/repositories/"
                        f"{push.repository}/packages/{push.image}"
                    ),
                )
            )

    def _write_log(self, record: BuildRecord) -> None:
        bucket = record.build.logs_bucket.removeprefix("gs://").split("/", 1)[0]
        data = ("\n".join(record.plan.log) + "\n").encode()
        try:
            self.storage.write(bucket, f"log-{record.build.id}.txt", data, record.build.project_id)
        except (httpx.HTTPError, GoogleApiError) as exc:
            record.build.warnings.append(
                Build.Warning(text=f"could not write the build log to gs://{bucket}: {exc}")
            )

    # -- registry protocol ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"builds": [r.to_state() for r in self._builds.values()]}

    def restore(self, state: dict[str, Any]) -> None:
        for data in state.get("builds", []):
            record = BuildRecord.from_state(data)
            project = record.build.project_id
            self._builds[(project, record.location, record.build.id)] = record
            if not record.applied:
                self._register_operation(record)
                self._schedule(record)

    def close(self) -> None:
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()


def _operation_error(build: Build) -> GoogleApiError:
    status = build.status
    if status == Status.CANCELLED:
        return GoogleApiError(499, "CANCELLED", "Build was cancelled")
    if status == Status.TIMEOUT:
        return GoogleApiError(504, "DEADLINE_EXCEEDED", "Build timeout")
    detail = build.status_detail or Status(status).name
    return GoogleApiError(500, "UNKNOWN", f"Build failed; check build logs for details: {detail}")


# ---------------------------------------------------------------------------------------------
# Routes: parse, call one backend method, serialise.


def routes(emulator: Emulator) -> list[Route]:
    def backend(call: Call) -> CloudBuildBackend:
        return call.emulator.cloud_build

    def where(call: Call) -> tuple[str, str]:
        return call.param("project"), call.params.get("location", "global")

    def create(call: Call) -> dict[str, Any]:
        project, location = where(call)
        return backend(call).create_build(project, location, call.body, call.caller)

    def get(call: Call) -> Build:
        project, location = where(call)
        return backend(call).get_build(project, location, call.param("id"))

    def list_(call: Call) -> dict[str, Any]:
        project, location = where(call)
        q = call.query
        size = q.get("pageSize", "0")
        if not size.isdigit():
            raise invalid_argument(f"Invalid value at 'page_size' (TYPE_INT32), \"{size}\"")
        if q.get("filter"):
            raise GoogleApiError(
                501, "UNIMPLEMENTED", "emulator.gcp does not implement list filters for builds"
            )
        return backend(call).list_builds(project, location, int(size), q.get("pageToken", ""))

    def cancel(call: Call) -> Build:
        project, location = where(call)
        return backend(call).cancel_build(project, location, call.param("id"))

    glob = "/v1/projects/{project}/builds"
    loc = "/v1/projects/{project}/locations/{location}/builds"
    return [
        Route("POST", glob, create, SERVICE),
        Route("GET", glob, list_, SERVICE),
        Route("GET", glob + "/{id}", get, SERVICE),
        Route("POST", glob + "/{id}:cancel", cancel, SERVICE),
        Route("POST", loc, create, SERVICE),
        Route("GET", loc, list_, SERVICE),
        Route("GET", loc + "/{id}", get, SERVICE),
        Route("POST", loc + "/{id}:cancel", cancel, SERVICE),
    ]
