"""Artifact Registry state: repositories and the Docker images Cloud Build pushes into them.

Knows nothing of HTTP; the mutating API methods return their long-running operation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from google.cloud import artifactregistry_v1 as ar
from google.protobuf import empty_pb2

from emulator.gcp.artifact_registry.spec import (
    DOCKER_MEDIA_TYPE,
    ENTITY_NOT_FOUND,
    IMAGE_URI,
    validate_digest,
    validate_new_repository,
)
from emulator.gcp.errors import already_exists, not_found
from emulator.gcp.operations import located_operation_name
from emulator.gcp.protojson import JsonMessage, message_to_json, parse_message, rfc3339
from emulator.gcp.service_usage import ServiceUsageBackend

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

RepoKey = tuple[str, str, str]


@dataclass
class DockerImage:
    """The emulator's record of one pushed image (one digest of one package)."""

    project: str
    location: str
    repository: str
    image: str  # the image name inside the repository, e.g. "ollama-gemma"
    digest: str  # "sha256:<hex>"
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    upload_time: float = 0.0

    @property
    def package_id(self) -> str:
        return quote(self.image, safe="")

    @property
    def repository_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/repositories/{self.repository}"

    @property
    def name(self) -> str:
        return f"{self.repository_name}/dockerImages/{self.package_id}@{self.digest}"

    @property
    def uri(self) -> str:
        host = f"{self.location}-docker.pkg.dev"
        return f"{host}/{self.project}/{self.repository}/{self.image}@{self.digest}"

    def to_proto(self) -> ar.DockerImage:
        when = rfc3339(self.upload_time)
        return ar.DockerImage(
            name=self.name,
            uri=self.uri,
            tags=list(self.tags),
            image_size_bytes=self.size_bytes,
            media_type=DOCKER_MEDIA_TYPE,
            upload_time=when,
            build_time=when,
            update_time=when,
        )


class ArtifactRegistryBackend:
    """Repositories keyed by (project, location, repository id), and their images."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._repos: dict[RepoKey, ar.Repository] = {}
        self._images: dict[RepoKey, list[DockerImage]] = {}

    def _key(self, project: str, location: str, repository: str) -> RepoKey:
        return (
            self.emulator.get(ServiceUsageBackend).resolve_project(project),
            location,
            repository,
        )

    def _repo(self, project: str, location: str, repository: str) -> RepoKey:
        key = self._key(project, location, repository)
        if key not in self._repos:
            raise not_found(ENTITY_NOT_FOUND)
        return key

    # -- repositories ----------------------------------------------------------------------

    def create_repository(
        self, project: str, location: str, repository_id: str, repository: ar.Repository
    ) -> dict[str, Any]:
        """CreateRepository: its long-running operation (done with the Repository)."""
        created = self.add_repository(project, location, repository_id, repository)
        return self._operation(project, location, created)

    def add_repository(
        self, project: str, location: str, repository_id: str, repository: ar.Repository
    ) -> ar.Repository:
        validate_new_repository(location, repository_id, repository)
        key = self._key(project, location, repository_id)
        name = f"projects/{key[0]}/locations/{location}/repositories/{repository_id}"
        if key in self._repos:
            raise already_exists(f"the repository already exists: {name}")
        now = rfc3339(self.emulator.clock())
        repo = ar.Repository(
            name=name,
            format_=repository.format_,
            description=repository.description,
            labels=dict(repository.labels),
            mode=repository.mode or ar.Repository.Mode.STANDARD_REPOSITORY,
            create_time=now,
            update_time=now,
            size_bytes=0,
            registry_uri=f"{location}-docker.pkg.dev/{key[0]}/{repository_id}",
        )
        self._repos[key] = repo
        self._images[key] = []
        return repo

    def get_repository(self, project: str, location: str, repository: str) -> ar.Repository:
        key = self._repo(project, location, repository)
        repo = ar.Repository.deserialize(ar.Repository.serialize(self._repos[key]))
        repo.size_bytes = sum(i.size_bytes for i in self._images[key])
        return repo

    def list_repositories(self, project: str, location: str) -> list[ar.Repository]:
        p = self.emulator.get(ServiceUsageBackend).resolve_project(project)
        keys = sorted(k for k in self._repos if k[:2] == (p, location))
        return [self.get_repository(*k) for k in keys]

    def delete_repository(self, project: str, location: str, repository: str) -> dict[str, Any]:
        """DeleteRepository (and its images): its long-running operation."""
        key = self._repo(project, location, repository)
        del self._repos[key]
        del self._images[key]
        return self._operation(project, location, empty_pb2.Empty())

    # -- images ----------------------------------------------------------------------------

    def push_image(
        self,
        project: str,
        location: str,
        repository: str,
        image: str,
        tags: list[str],
        digest: str,
        metadata: dict[str, str] | None = None,
        size_bytes: int = 0,
    ) -> DockerImage:
        """Record a pushed image; tags move from older digests of the same image to this one."""
        key = self._repo(project, location, repository)
        validate_digest(digest)
        images = self._images[key]
        for other in images:
            if other.image == image:
                other.tags = [t for t in other.tags if t not in tags]
        existing = next((i for i in images if i.image == image and i.digest == digest), None)
        if existing is None:
            existing = DockerImage(key[0], location, repository, image, digest)
            images.append(existing)
        existing.tags = sorted(set(existing.tags) | set(tags))
        existing.metadata = dict(metadata or existing.metadata)
        existing.size_bytes = size_bytes or existing.size_bytes
        existing.upload_time = self.emulator.clock()
        return existing

    def find_image(self, uri: str) -> DockerImage | None:
        """The image an `L-docker.pkg.dev/P/R/IMAGE[:TAG|@sha256:HEX]` reference names."""
        m = IMAGE_URI.match(uri)
        if m is None:
            return None
        key = self._key(m["project"], m["location"], m["repository"])
        tag = m["tag"] or (None if m["digest"] else "latest")
        for img in self._images.get(key, []):
            if img.image == m["image"] and (img.digest == m["digest"] or tag in img.tags):
                return img
        return None

    def list_images(self, project: str, location: str, repository: str) -> list[DockerImage]:
        return list(self._images[self._repo(project, location, repository)])

    def get_image(self, project: str, location: str, repository: str, ref: str) -> DockerImage:
        package, sep, digest = ref.rpartition("@")
        for img in self.list_images(project, location, repository):
            if sep and img.package_id == package and img.digest == digest:
                return img
        raise not_found(ENTITY_NOT_FOUND)

    def packages(
        self, project: str, location: str, repository: str
    ) -> dict[str, list[DockerImage]]:
        out: dict[str, list[DockerImage]] = {}
        for img in self.list_images(project, location, repository):
            out.setdefault(img.package_id, []).append(img)
        return dict(sorted(out.items()))

    def package(
        self, project: str, location: str, repository: str, package: str
    ) -> list[DockerImage]:
        images = self.packages(project, location, repository).get(package)
        if not images:
            raise not_found(ENTITY_NOT_FOUND)
        return images

    def delete_package(
        self, project: str, location: str, repository: str, package: str
    ) -> dict[str, Any]:
        """DeletePackage (all its versions): its long-running operation."""
        self.package(project, location, repository, package)
        key = self._repo(project, location, repository)
        self._images[key] = [i for i in self._images[key] if i.package_id != package]
        return self._operation(project, location, empty_pb2.Empty())

    def _operation(self, project: str, location: str, response: JsonMessage) -> dict[str, Any]:
        project_id = self.emulator.get(ServiceUsageBackend).resolve_project(project)
        return self.emulator.start_operation(
            located_operation_name(project_id, location),
            ar.OperationMetadata(),
            lambda: (response, None),
        )

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "repositories": [message_to_json(r) for r in self._repos.values()],
            "images": [asdict(i) for imgs in self._images.values() for i in imgs],
        }

    def restore(self, state: dict[str, Any]) -> None:
        for data in state.get("repositories", []):
            repo = parse_message(ar.Repository, data)
            _, project, _, location, _, repo_id = repo.name.split("/")
            self._repos[(project, location, repo_id)] = repo
            self._images[(project, location, repo_id)] = []
        for data in state.get("images", []):
            img = DockerImage(**data)
            self._images.setdefault((img.project, img.location, img.repository), []).append(img)

    def close(self) -> None:
        pass
