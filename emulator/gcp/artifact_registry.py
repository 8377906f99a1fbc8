"""Artifact Registry v1: repositories and the Docker images Cloud Build pushes into them.

Routes (`google/cloud/artifactregistry_v1/.../rest_base.py`), under
`/v1/projects/{project}/locations/{location}`:
  POST   /repositories?repositoryId=ID       -> LRO(Repository)   409 when it exists
  GET    /repositories[/{repository}]        -> ListRepositoriesResponse / Repository
  DELETE /repositories/{repository}          -> LRO(Empty), deletes its images
  GET    /repositories/{r}/dockerImages[/{image}]   (image = "NAME@sha256:HEX")
  GET    /repositories/{r}/packages[/{package}], DELETE /repositories/{r}/packages/{package}
  GET    /repositories/{r}/packages/{package}/tags, /versions
A package id is the image name with "/" escaped as "%2F", as Google names it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from google.cloud import artifactregistry_v1 as ar
from google.protobuf import empty_pb2

from emulator.gcp.core import (
    Call,
    Route,
    already_exists,
    invalid_argument,
    message_to_json,
    not_found,
    paginate,
    parse_message,
    rfc3339,
)

if TYPE_CHECKING:
    from emulator.gcp.core import Emulator

SERVICE = "artifactregistry.googleapis.com"
_REPO_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_LOCATION = re.compile(r"^([a-z]+-[a-z]+[0-9]+|us|europe|asia)$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_URI = re.compile(
    r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repository>[^/]+)/"
    r"(?P<image>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[\w][\w.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
ENTITY_NOT_FOUND = "Requested entity was not found."
DOCKER_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"

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
        return (self.emulator.service_usage.resolve_project(project), location, repository)

    def _repo(self, project: str, location: str, repository: str) -> RepoKey:
        key = self._key(project, location, repository)
        if key not in self._repos:
            raise not_found(ENTITY_NOT_FOUND)
        return key

    # -- repositories ----------------------------------------------------------------------

    def create_repository(
        self, project: str, location: str, repository_id: str, repository: ar.Repository
    ) -> ar.Repository:
        if not _LOCATION.match(location):
            raise invalid_argument(f"Invalid location {location!r}.")
        if not repository_id:
            raise invalid_argument("Repository ID must be specified.")
        if not _REPO_ID.match(repository_id):
            raise invalid_argument(
                f"Invalid repository ID {repository_id!r}: it must start with a lowercase letter, "
                "contain only lowercase letters, numbers and hyphens, end with a letter or number "
                "and be at most 63 characters long."
            )
        if repository.format_ == ar.Repository.Format.FORMAT_UNSPECIFIED:
            raise invalid_argument("Repository format must be specified.")
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
        p = self.emulator.service_usage.resolve_project(project)
        keys = sorted(k for k in self._repos if k[:2] == (p, location))
        return [self.get_repository(*k) for k in keys]

    def delete_repository(self, project: str, location: str, repository: str) -> None:
        key = self._repo(project, location, repository)
        del self._repos[key]
        del self._images[key]

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
        if not _DIGEST.match(digest):
            raise invalid_argument(f"Invalid digest {digest!r}: expected sha256:<64 hex>.")
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
        m = _URI.match(uri)
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

    def delete_package(self, project: str, location: str, repository: str, package: str) -> None:
        self.package(project, location, repository, package)
        key = self._repo(project, location, repository)
        self._images[key] = [i for i in self._images[key] if i.package_id != package]

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


# ---------------------------------------------------------------------------------------------


def _package_proto(repo_name: str, package: str, images: list[DockerImage]) -> ar.Package:
    return ar.Package(
        name=f"{repo_name}/packages/{package}",
        display_name=unquote(package),
        create_time=rfc3339(min(i.upload_time for i in images)),
        update_time=rfc3339(max(i.upload_time for i in images)),
    )


def routes(emulator: Emulator) -> list[Route]:
    def backend() -> ArtifactRegistryBackend:
        return emulator.artifact_registry  # looked up per call: reset() rebuilds backends

    def loc(call: Call) -> tuple[str, str]:
        return call.param("project"), call.param("location")

    def repo(call: Call) -> tuple[str, str, str]:
        return call.param("project"), call.param("location"), call.param("repository")

    def operation(call: Call, response: Any) -> dict[str, Any]:
        project, location = loc(call)
        project = emulator.service_usage.resolve_project(project)
        name = f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}"
        return emulator.operations.create(
            name,
            ar.OperationMetadata(),
            resolve=lambda: (response, None),
            polls_until_done=emulator.config.operation_polls,
        )

    def page(call: Call, items: list[Any]) -> tuple[list[Any], str]:
        return paginate(items, call.query.get("pageSize"), call.query.get("pageToken"))

    def create_repository(call: Call) -> dict[str, Any]:
        body = parse_message(ar.Repository, call.body)
        created = backend().create_repository(*loc(call), call.query.get("repositoryId", ""), body)
        return operation(call, created)

    def get_repository(call: Call) -> ar.Repository:
        return backend().get_repository(*repo(call))

    def list_repositories(call: Call) -> ar.ListRepositoriesResponse:
        items, token = page(call, backend().list_repositories(*loc(call)))
        return ar.ListRepositoriesResponse(repositories=items, next_page_token=token)

    def delete_repository(call: Call) -> dict[str, Any]:
        backend().delete_repository(*repo(call))
        return operation(call, empty_pb2.Empty())

    def list_docker_images(call: Call) -> ar.ListDockerImagesResponse:
        images = sorted(backend().list_images(*repo(call)), key=lambda i: i.name)
        items, token = page(call, [i.to_proto() for i in images])
        return ar.ListDockerImagesResponse(docker_images=items, next_page_token=token)

    def get_docker_image(call: Call) -> ar.DockerImage:
        return backend().get_image(*repo(call), call.param("image")).to_proto()

    def list_packages(call: Call) -> ar.ListPackagesResponse:
        repo_name = backend().get_repository(*repo(call)).name
        packages = [
            _package_proto(repo_name, p, i) for p, i in backend().packages(*repo(call)).items()
        ]
        items, token = page(call, packages)
        return ar.ListPackagesResponse(packages=items, next_page_token=token)

    def get_package(call: Call) -> ar.Package:
        images = backend().package(*repo(call), call.param("package"))
        return _package_proto(images[0].repository_name, call.param("package"), images)

    def delete_package(call: Call) -> dict[str, Any]:
        backend().delete_package(*repo(call), call.param("package"))
        return operation(call, empty_pb2.Empty())

    def list_tags(call: Call) -> ar.ListTagsResponse:
        images = backend().package(*repo(call), call.param("package"))
        base = f"{images[0].repository_name}/packages/{call.param('package')}"
        tags = sorted(
            (
                ar.Tag(name=f"{base}/tags/{t}", version=f"{base}/versions/{i.digest}")
                for i in images
                for t in i.tags
            ),
            key=lambda t: t.name,
        )
        items, token = page(call, tags)
        return ar.ListTagsResponse(tags=items, next_page_token=token)

    def list_versions(call: Call) -> ar.ListVersionsResponse:
        images = backend().package(*repo(call), call.param("package"))
        base = f"{images[0].repository_name}/packages/{call.param('package')}"
        versions = [
            ar.Version(
                name=f"{base}/versions/{i.digest}",
                create_time=rfc3339(i.upload_time),
                update_time=rfc3339(i.upload_time),
            )
            for i in images
        ]
        items, token = page(call, versions)
        return ar.ListVersionsResponse(versions=items, next_page_token=token)

    base = "/v1/projects/{project}/locations/{location}/repositories"
    one = base + "/{repository}"
    pkg = one + "/packages/{package}"
    return [
        Route("POST", base, create_repository, SERVICE),
        Route("GET", base, list_repositories, SERVICE),
        Route("GET", one, get_repository, SERVICE),
        Route("DELETE", one, delete_repository, SERVICE),
        Route("GET", one + "/dockerImages", list_docker_images, SERVICE),
        Route("GET", one + "/dockerImages/{image}", get_docker_image, SERVICE),
        Route("GET", one + "/packages", list_packages, SERVICE),
        Route("GET", pkg, get_package, SERVICE),
        Route("DELETE", pkg, delete_package, SERVICE),
        Route("GET", pkg + "/tags", list_tags, SERVICE),
        Route("GET", pkg + "/versions", list_versions, SERVICE),
    ]
