"""Artifact Registry v1 routes (`google/cloud/artifactregistry_v1/.../rest_base.py`), under
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

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from google.cloud import artifactregistry_v1 as ar

from emulator.gcp.artifact_registry.backend import ArtifactRegistryBackend, DockerImage
from emulator.gcp.artifact_registry.spec import SERVICE
from emulator.gcp.protojson import parse_message, rfc3339
from emulator.gcp.routing import Call, Route, paginate

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


def _backend(call: Call) -> ArtifactRegistryBackend:
    return call.emulator.get(ArtifactRegistryBackend)


def _loc(call: Call) -> tuple[str, str]:
    return call.param("project"), call.param("location")


def _repo(call: Call) -> tuple[str, str, str]:
    return call.param("project"), call.param("location"), call.param("repository")


def _page(call: Call, items: list[Any]) -> tuple[list[Any], str]:
    return paginate(items, call.query.get("pageSize"), call.query.get("pageToken"))


def _package_proto(repo_name: str, package: str, images: list[DockerImage]) -> ar.Package:
    return ar.Package(
        name=f"{repo_name}/packages/{package}",
        display_name=unquote(package),
        create_time=rfc3339(min(i.upload_time for i in images)),
        update_time=rfc3339(max(i.upload_time for i in images)),
    )


def create_repository(call: Call) -> dict[str, Any]:
    body = parse_message(ar.Repository, call.body)
    repository_id = call.query.get("repositoryId", "")
    return _backend(call).create_repository(*_loc(call), repository_id, body)


def get_repository(call: Call) -> ar.Repository:
    return _backend(call).get_repository(*_repo(call))


def list_repositories(call: Call) -> ar.ListRepositoriesResponse:
    items, token = _page(call, _backend(call).list_repositories(*_loc(call)))
    return ar.ListRepositoriesResponse(repositories=items, next_page_token=token)


def delete_repository(call: Call) -> dict[str, Any]:
    return _backend(call).delete_repository(*_repo(call))


def list_docker_images(call: Call) -> ar.ListDockerImagesResponse:
    images = sorted(_backend(call).list_images(*_repo(call)), key=lambda i: i.name)
    items, token = _page(call, [i.to_proto() for i in images])
    return ar.ListDockerImagesResponse(docker_images=items, next_page_token=token)


def get_docker_image(call: Call) -> ar.DockerImage:
    return _backend(call).get_image(*_repo(call), call.param("image")).to_proto()


def list_packages(call: Call) -> ar.ListPackagesResponse:
    backend = _backend(call)
    repo_name = backend.get_repository(*_repo(call)).name
    packages = [_package_proto(repo_name, p, i) for p, i in backend.packages(*_repo(call)).items()]
    items, token = _page(call, packages)
    return ar.ListPackagesResponse(packages=items, next_page_token=token)


def get_package(call: Call) -> ar.Package:
    images = _backend(call).package(*_repo(call), call.param("package"))
    return _package_proto(images[0].repository_name, call.param("package"), images)


def delete_package(call: Call) -> dict[str, Any]:
    return _backend(call).delete_package(*_repo(call), call.param("package"))


def _package_versions(call: Call) -> tuple[str, list[DockerImage]]:
    images = _backend(call).package(*_repo(call), call.param("package"))
    return f"{images[0].repository_name}/packages/{call.param('package')}", images


def list_tags(call: Call) -> ar.ListTagsResponse:
    base, images = _package_versions(call)
    tags = sorted(
        (
            ar.Tag(name=f"{base}/tags/{t}", version=f"{base}/versions/{i.digest}")
            for i in images
            for t in i.tags
        ),
        key=lambda t: t.name,
    )
    items, token = _page(call, tags)
    return ar.ListTagsResponse(tags=items, next_page_token=token)


def list_versions(call: Call) -> ar.ListVersionsResponse:
    base, images = _package_versions(call)
    versions = [
        ar.Version(
            name=f"{base}/versions/{i.digest}",
            create_time=rfc3339(i.upload_time),
            update_time=rfc3339(i.upload_time),
        )
        for i in images
    ]
    items, token = _page(call, versions)
    return ar.ListVersionsResponse(versions=items, next_page_token=token)


def routes(emulator: Emulator) -> list[Route]:
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
