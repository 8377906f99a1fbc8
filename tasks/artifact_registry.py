"""Artifact Registry: the Docker repository and the images Cloud Build pushes into it."""

from __future__ import annotations

from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.cloud import artifactregistry_v1
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.errors import translate_google_error
from tasks.retries import transient_retry

OPERATION_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class ImageRef:
    """An image in the registry: its tag URI and its immutable digest URI."""

    tag_uri: str
    digest: str

    @property
    def digest_uri(self) -> str:
        return f"{self.tag_uri.rsplit(':', 1)[0]}@{self.digest}"


def registry_host(region: str) -> str:
    return f"{region}-docker.pkg.dev"


def image_uri(project: str, region: str, repository: str, image: str, tag: str) -> str:
    """``us-central1-docker.pkg.dev/P/REPO/IMAGE:TAG``."""
    return f"{registry_host(region)}/{project}/{repository}/{image}:{tag}"


def repository_name(project: str, region: str, repository: str) -> str:
    return artifactregistry_v1.ArtifactRegistryClient.repository_path(project, region, repository)


def build_repository(labels: dict[str, str]) -> artifactregistry_v1.Repository:
    return artifactregistry_v1.Repository(
        format_=artifactregistry_v1.Repository.Format.DOCKER,
        description="Ollama images built by ollama-cloudrun",
        labels=labels,
    )


def ensure_repository(
    cloud: GoogleCloud, region: str, repository: str, labels: dict[str, str]
) -> tuple[artifactregistry_v1.Repository, bool]:
    """Create the Docker repository, or get it when it exists. Returns (repository, created)."""
    client = clients.artifact_registry_client(cloud)
    name = repository_name(cloud.project, region, repository)
    try:
        return client.get_repository(name=name, retry=transient_retry()), False
    except gexc.NotFound:
        pass
    try:
        operation = client.create_repository(
            parent=f"projects/{cloud.project}/locations/{region}",
            repository=build_repository(labels),
            repository_id=repository,
            retry=transient_retry(),
        )
        return operation.result(timeout=OPERATION_TIMEOUT_SECONDS), True
    except gexc.Conflict:
        return client.get_repository(name=name, retry=transient_retry()), False
    except (gexc.Forbidden, gexc.BadRequest) as exc:
        raise translate_google_error(exc, f"create repository {name}") from exc


def find_tag(cloud: GoogleCloud, region: str, repository: str, image: str, tag: str) -> str | None:
    """The digest (``sha256:…``) the tag points at, or None when the tag (or image) is absent."""
    client = clients.artifact_registry_client(cloud)
    package = client.package_path(cloud.project, region, repository, image)
    try:
        for found in client.list_tags(parent=package, retry=transient_retry()):
            if found.name.rsplit("/", 1)[-1] == tag:
                return found.version.rsplit("/", 1)[-1]
    except gexc.NotFound:
        return None
    return None


def delete_repository(cloud: GoogleCloud, region: str, repository: str) -> bool:
    """Delete the repository and every image in it. True if deleted, False if already gone."""
    client = clients.artifact_registry_client(cloud)
    try:
        operation = client.delete_repository(
            name=repository_name(cloud.project, region, repository), retry=transient_retry()
        )
        operation.result(timeout=OPERATION_TIMEOUT_SECONDS)
    except gexc.NotFound:
        return False
    return True


def list_managed_repositories(
    cloud: GoogleCloud, region: str, label: tuple[str, str]
) -> list[artifactregistry_v1.Repository]:
    client = clients.artifact_registry_client(cloud)
    key, value = label
    try:
        repos = client.list_repositories(
            parent=f"projects/{cloud.project}/locations/{region}", retry=transient_retry()
        )
        return [r for r in repos if r.labels.get(key) == value]
    except gexc.NotFound:
        return []


@task(name="ensure-repository", cache_policy=NO_CACHE)
def ensure_repository_task(
    cloud: GoogleCloud, region: str, repository: str, labels: dict[str, str]
) -> tuple[str, bool]:
    repo, created = ensure_repository(cloud, region, repository, labels)
    get_run_logger().info("Repository %s %s", repo.name, "created" if created else "exists")
    return repo.name, created


@task(name="find-image-tag", cache_policy=NO_CACHE)
def find_image_tag(
    cloud: GoogleCloud, region: str, repository: str, image: str, tag: str
) -> ImageRef | None:
    digest = find_tag(cloud, region, repository, image, tag)
    if digest is None:
        return None
    return ImageRef(image_uri(cloud.project, region, repository, image, tag), digest)


@task(name="delete-repository", cache_policy=NO_CACHE)
def delete_repository_task(cloud: GoogleCloud, region: str, repository: str) -> bool:
    return delete_repository(cloud, region, repository)
