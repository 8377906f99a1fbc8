"""Cloud Build v1 through the official `cloudbuild_v1` REST client against `python -m emulator.gcp`
(with its fake-gcs-server): the source tarball is uploaded with google-cloud-storage as
`gcloud builds submit` does; images land in the emulated Artifact Registry."""

from __future__ import annotations

import io
import tarfile
import time
import uuid
from collections.abc import Iterator

import google.auth
import httpx
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import artifactregistry_v1, service_usage_v1, storage
from google.cloud.devtools import cloudbuild_v1 as cb
from google.protobuf import duration_pb2

from emulator.gcp import GcpEmulatorProcess
from emulator.gcp.cloud_build import (
    StepFailure,
    content_digest,
    inspect_dockerfile,
    parse_docker_args,
    unpack_source,
)

LOCATION = "us-central1"
DOCKERFILE = (
    "FROM ollama/ollama:0.5.7\n"
    "ARG MODEL=gemma2:9b\n"
    "ENV OLLAMA_HOST=0.0.0.0:8080 MODEL=$MODEL\n"
    "COPY entrypoint.sh /entrypoint.sh\n"
    "RUN ollama serve & sleep 5 && ollama pull $MODEL\n"
    'ENTRYPOINT ["/entrypoint.sh"]\n'
)
Status = cb.Build.Status


def tarball(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Gcp:
    def __init__(self, env: dict[str, str]) -> None:
        self.base = env["OLLAMA_CLOUDRUN_API_ENDPOINT"]
        self.project = env["GOOGLE_CLOUD_PROJECT"]
        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        options = ClientOptions(api_endpoint=self.base)
        kw = {"credentials": creds, "transport": "rest", "client_options": options}
        self.builds = cb.CloudBuildClient(**kw)
        self.registry = artifactregistry_v1.ArtifactRegistryClient(**kw)
        self.usage = service_usage_v1.ServiceUsageClient(**kw)
        self.storage = storage.Client(project=self.project)
        self.repo = f"repo-{uuid.uuid4().hex[:8]}"

    def configure(self, **config: object) -> None:
        httpx.post(f"{self.base}/_emulator/config", json=config, timeout=30).raise_for_status()

    def enable(self, *services: str) -> None:
        self.usage.batch_enable_services(
            request={"parent": f"projects/{self.project}", "service_ids": list(services)}
        ).result(timeout=60)

    def create_repo(self) -> None:
        self.registry.create_repository(
            parent=f"projects/{self.project}/locations/{LOCATION}",
            repository_id=self.repo,
            repository=artifactregistry_v1.Repository(
                format_=artifactregistry_v1.Repository.Format.DOCKER
            ),
        ).result(timeout=60)

    def image(self, name: str = "ollama-gemma") -> str:
        return f"{LOCATION}-docker.pkg.dev/{self.project}/{self.repo}/{name}"

    def upload(self, files: dict[str, str]) -> cb.StorageSource:
        bucket_name = f"{self.project}_cloudbuild"
        bucket = self.storage.lookup_bucket(bucket_name) or self.storage.create_bucket(
            bucket_name, location="US"
        )
        blob = bucket.blob(f"source/{time.time():.6f}-{uuid.uuid4().hex}.tgz")
        blob.upload_from_string(tarball(files), content_type="application/gzip")
        return cb.StorageSource(bucket=bucket_name, object_=blob.name, generation=blob.generation)

    def docker_build(
        self, source: cb.StorageSource, tags: list[str], extra: list[str] | None = None
    ) -> cb.Build:
        args = ["build", "--network", "cloudbuild", "--no-cache"]
        for tag in tags:
            args += ["-t", tag]
        return cb.Build(
            source=cb.Source(storage_source=source),
            steps=[cb.BuildStep(name="gcr.io/cloud-builders/docker", args=[*args, *(extra or [])])],
            images=tags,
            timeout=duration_pb2.Duration(seconds=1800),
            options=cb.BuildOptions(machine_type=cb.BuildOptions.MachineType.E2_HIGHCPU_32),
        )


@pytest.fixture
def gcp(gcp_env: dict[str, str], gcp_emulator: GcpEmulatorProcess) -> Iterator[Gcp]:
    g = Gcp(gcp_env)
    g.configure(build_seconds=0.6)
    g.enable("cloudbuild.googleapis.com", "artifactregistry.googleapis.com")
    yield g


def test_build_pushes_the_image_with_tags_digest_and_model(gcp: Gcp) -> None:
    gcp.create_repo()
    files = {"Dockerfile": DOCKERFILE, "entrypoint.sh": "#!/bin/sh\nexec ollama serve\n"}
    source = gcp.upload(files)
    tags = [f"{gcp.image()}:v1", f"{gcp.image()}:latest"]
    build = gcp.docker_build(source, tags, ["--build-arg", "MODEL=smollm2:135m", "."])
    op = gcp.builds.create_build(project_id=gcp.project, build=build)
    meta = op.metadata.build
    assert op.operation.name.startswith(f"operations/build/{gcp.project}/")
    assert meta.status == Status.QUEUED
    assert meta.log_url.startswith("https://console.cloud.google.com/cloud-build/builds/")
    result = op.result(timeout=60)
    assert result.status == Status.SUCCESS
    assert result.options.machine_type == cb.BuildOptions.MachineType.E2_HIGHCPU_32
    assert result.start_time and result.finish_time >= result.start_time
    digest = content_digest(unpack_source(tarball(files)), ".", "Dockerfile",
                            {"MODEL": "smollm2:135m"})  # fmt: skip
    assert {i.name for i in result.results.images} == set(tags)
    assert {i.digest for i in result.results.images} == {digest}

    got = gcp.builds.get_build(project_id=gcp.project, id=meta.id)
    assert got.status == Status.SUCCESS and got.id == meta.id
    images = list(gcp.registry.list_docker_images(parent=gcp.registry.repository_path(
        gcp.project, LOCATION, gcp.repo)))  # fmt: skip
    assert len(images) == 1
    assert images[0].uri.endswith(f"/ollama-gemma@{digest}")
    assert sorted(images[0].tags) == ["latest", "v1"]
    state = httpx.get(f"{gcp.base}/_emulator/state", timeout=30).json()
    recorded = [
        i for i in state["backends"]["artifact_registry"]["images"] if i["digest"] == digest
    ]
    assert recorded[0]["metadata"]["model"] == "smollm2:135m"

    log = gcp.storage.bucket(f"{gcp.project}_cloudbuild").blob(f"log-{meta.id}.txt")
    text = log.download_as_text()
    assert "FETCHSOURCE" in text and "DONE" in text and "smollm2:135m" in text


def test_build_moves_queued_working_success_on_the_regional_endpoint(gcp: Gcp) -> None:
    gcp.configure(build_seconds=1.5)
    gcp.create_repo()
    source = gcp.upload({"Dockerfile": "FROM scratch\nENV MODEL=gemma3:270m\n"})
    parent = f"projects/{gcp.project}/locations/{LOCATION}"
    op = gcp.builds.create_build(
        request={"parent": parent, "build": gcp.docker_build(source, [gcp.image()], ["."])}
    )
    assert op.operation.name.startswith(f"{parent}/operations/")
    name = f"{parent}/builds/{op.metadata.build.id}"
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = gcp.builds.get_build(request={"name": name}).status
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == Status.SUCCESS:
            break
        time.sleep(0.1)
    assert seen == [Status.QUEUED, Status.WORKING, Status.SUCCESS]
    assert op.result(timeout=30).results.images[0].name == gcp.image()
    listed = [b.id for b in gcp.builds.list_builds(request={"parent": parent})]
    assert op.metadata.build.id in listed


@pytest.mark.parametrize(
    ("files", "extra", "detail"),
    [
        ({"README.md": "no dockerfile"}, ["."], "lstat /workspace/Dockerfile: no such file"),
        ({"Dockerfile": "FROM a\nFOO bar\n"}, ["."], "line 2: unknown instruction: FOO"),
        ({"Dockerfile": "RUN echo hi\n"}, ["."], "no build stage in current context"),
        ({"Dockerfile": ""}, ["."], "cannot be empty"),
        ({"Dockerfile": "FROM a\nCOPY missing.txt /x\n"}, ["."], "COPY failed: file not found"),
        ({"sub/Dockerfile": "FROM a\n"}, ["-f", "Other", "sub"], "lstat /workspace/Other"),
        ({"Dockerfile": "FROM a\n"}, ["--bogus", "."], "unknown flag: --bogus"),
    ],
)
def test_invalid_source_fails_the_build(
    gcp: Gcp, files: dict[str, str], extra: list[str], detail: str
) -> None:
    gcp.create_repo()
    op = gcp.builds.create_build(
        project_id=gcp.project,
        build=gcp.docker_build(gcp.upload(files), [gcp.image()], extra),
    )
    with pytest.raises(gexc.GoogleAPICallError, match="Build failed; check build logs") as info:
        op.result(timeout=60)
    assert detail in info.value.message
    build = gcp.builds.get_build(project_id=gcp.project, id=op.metadata.build.id)
    assert build.status == Status.FAILURE
    assert build.failure_info.type_ == cb.Build.FailureInfo.FailureType.USER_BUILD_STEP
    assert detail in build.status_detail and detail in build.failure_info.detail
    assert not build.results.images
    assert not list(gcp.registry.list_docker_images(parent=gcp.registry.repository_path(
        gcp.project, LOCATION, gcp.repo)))  # fmt: skip


def test_push_to_a_missing_repository_fails_naming_it(gcp: Gcp) -> None:
    source = gcp.upload({"Dockerfile": "FROM a\n"})
    op = gcp.builds.create_build(
        project_id=gcp.project, build=gcp.docker_build(source, [gcp.image()], ["."])
    )
    with pytest.raises(gexc.GoogleAPICallError, match=f'Repository "{gcp.repo}" not found'):
        op.result(timeout=60)
    build = gcp.builds.get_build(project_id=gcp.project, id=op.metadata.build.id)
    assert build.failure_info.type_ == cb.Build.FailureInfo.FailureType.PUSH_FAILED


def test_bad_requests_are_400(gcp: Gcp) -> None:
    with pytest.raises(gexc.BadRequest, match="could not resolve source"):
        gcp.builds.create_build(
            project_id=gcp.project,
            build=gcp.docker_build(
                cb.StorageSource(bucket=f"{gcp.project}_cloudbuild", object_="source/nope.tgz"),
                [gcp.image()],
                ["."],
            ),
        )
    with pytest.raises(gexc.BadRequest, match="no build steps"):
        gcp.builds.create_build(project_id=gcp.project, build=cb.Build(images=[gcp.image()]))
    with pytest.raises(gexc.NotFound):
        gcp.builds.get_build(project_id=gcp.project, id=str(uuid.uuid4()))


def test_cancel_and_disabled_api(gcp: Gcp) -> None:
    gcp.configure(build_seconds=30)
    gcp.create_repo()
    op = gcp.builds.create_build(
        project_id=gcp.project,
        build=gcp.docker_build(gcp.upload({"Dockerfile": "FROM a\n"}), [gcp.image()], ["."]),
    )
    cancelled = gcp.builds.cancel_build(project_id=gcp.project, id=op.metadata.build.id)
    assert cancelled.status == Status.CANCELLED
    with pytest.raises(gexc.Cancelled):
        op.result(timeout=30)
    gcp.usage.disable_service(
        request={"name": f"projects/{gcp.project}/services/cloudbuild.googleapis.com"}
    ).result(timeout=60)
    with pytest.raises(gexc.Forbidden) as info:
        gcp.builds.get_build(project_id=gcp.project, id=op.metadata.build.id)
    assert info.value.reason == "SERVICE_DISABLED"


# Pure pieces, no HTTP.


def test_docker_args_and_dockerfile_model() -> None:
    cmd = parse_docker_args(["build", "-t", "x:1", "--build-arg=MODEL", "-f", "d/Df", "ctx"],
                            {"MODEL": "from-env"})  # fmt: skip
    assert cmd.build_args == {"MODEL": "from-env"}  # type: ignore[union-attr]
    assert cmd.dockerfile == "d/Df" and cmd.context == "ctx"  # type: ignore[union-attr]
    with pytest.raises(StepFailure, match="requires exactly 1 argument"):
        parse_docker_args(["build", "-t", "x"])
    text = "ARG MODEL=gemma2:9b\nFROM base\nARG MODEL\nENV MODEL=${MODEL}\n"
    assert inspect_dockerfile(text, {}, {}).model == "gemma2:9b"
    assert inspect_dockerfile(text, {"MODEL": "other"}, {}).model == "other"
