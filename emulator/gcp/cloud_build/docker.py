"""`gcr.io/cloud-builders/docker` command lines and image references, as Docker reads them.

Pure: arguments in, a typed command out; Docker's own error texts as `StepFailure`s.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from emulator.gcp.cloud_build.spec import StepFailure


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
