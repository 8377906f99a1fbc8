"""Dockerfiles as `docker build` reads them (`dockerfile-parse`), and the image's content digest.

Pure: a Dockerfile and the build context in, the facts the build needs out; Docker's own error
texts as `StepFailure`s.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from dockerfile_parse import DockerfileParser

from emulator.gcp.cloud_build.spec import StepFailure

KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


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
