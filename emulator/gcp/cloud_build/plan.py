"""What a build does, decided from its steps and its unpacked source: the images it pushes, or
its failure, and its log. Pure: files in, plan out; never raises for user errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from google.cloud.devtools import cloudbuild_v1

from emulator.gcp.cloud_build.docker import (
    DockerBuild,
    DockerTag,
    parse_docker_args,
    parse_image_ref,
)
from emulator.gcp.cloud_build.dockerfile import content_digest, inspect_dockerfile
from emulator.gcp.cloud_build.spec import DOCKER_BUILDER, Build, FailureType, StepFailure


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
