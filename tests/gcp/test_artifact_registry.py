"""Artifact Registry v1 through the official client (images pushed by the backend, as Cloud Build
does)."""

from __future__ import annotations

import hashlib

import pytest
from google.api_core import exceptions
from google.cloud import artifactregistry_v1 as ar

from tests.gcp.conftest import PROJECT, LocalGcp

LOC = f"projects/{PROJECT}/locations/us-central1"


@pytest.fixture
def client(local_gcp: LocalGcp, ar_client: ar.ArtifactRegistryClient) -> ar.ArtifactRegistryClient:
    local_gcp.enable("artifactregistry.googleapis.com")
    return ar_client


def _create(client: ar.ArtifactRegistryClient, repo_id: str = "ollama") -> ar.Repository:
    repo = ar.Repository(format_=ar.Repository.Format.DOCKER, description="Ollama images")
    result: ar.Repository = client.create_repository(
        parent=LOC, repository=repo, repository_id=repo_id
    ).result(timeout=30)
    return result


def test_create_get_list_delete(client: ar.ArtifactRegistryClient) -> None:
    repo = _create(client)
    assert repo.name == f"{LOC}/repositories/ollama"
    assert repo.format_ == ar.Repository.Format.DOCKER
    assert repo.registry_uri == f"us-central1-docker.pkg.dev/{PROJECT}/ollama"
    assert client.get_repository(name=repo.name).description == "Ollama images"
    assert [r.name for r in client.list_repositories(parent=LOC)] == [repo.name]
    client.delete_repository(name=repo.name).result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        client.get_repository(name=repo.name)
    with pytest.raises(exceptions.NotFound):
        client.delete_repository(name=repo.name)


def test_duplicate_is_conflict_and_bad_id_is_bad_request(client: ar.ArtifactRegistryClient) -> None:
    _create(client)
    with pytest.raises(exceptions.Conflict):
        _create(client)
    with pytest.raises(exceptions.BadRequest):
        _create(client, "Bad_Repo")
    with pytest.raises(exceptions.BadRequest):
        client.create_repository(parent=LOC, repository=ar.Repository(), repository_id="nofmt")


def test_images_packages_tags(local_gcp: LocalGcp, client: ar.ArtifactRegistryClient) -> None:
    repo = _create(client)
    d1 = "sha256:" + hashlib.sha256(b"one").hexdigest()
    d2 = "sha256:" + hashlib.sha256(b"two").hexdigest()
    backend = local_gcp.emulator.artifact_registry
    backend.push_image(
        PROJECT,
        "us-central1",
        "ollama",
        "ollama-gemma",
        ["latest", "v1"],
        d1,
        {"model": "gemma2:9b"},
    )
    backend.push_image(PROJECT, "us-central1", "ollama", "ollama-gemma", ["latest"], d2)
    images = {i.uri: i for i in client.list_docker_images(parent=repo.name)}
    uri1 = f"us-central1-docker.pkg.dev/{PROJECT}/ollama/ollama-gemma@{d1}"
    assert set(images) == {uri1, uri1.replace(d1, d2)}
    assert list(images[uri1].tags) == ["v1"]  # "latest" moved to the newer digest
    got = client.get_docker_image(name=f"{repo.name}/dockerImages/ollama-gemma@{d1}")
    assert got.uri == uri1
    with pytest.raises(exceptions.NotFound):
        client.get_docker_image(name=f"{repo.name}/dockerImages/ollama-gemma@sha256:{'0' * 64}")
    found = backend.find_image(f"us-central1-docker.pkg.dev/{PROJECT}/ollama/ollama-gemma:v1")
    assert found is not None and found.metadata == {"model": "gemma2:9b"}
    assert (
        backend.find_image(f"us-central1-docker.pkg.dev/{PROJECT}/ollama/ollama-gemma").digest == d2
    )  # type: ignore[union-attr]
    pkgs = list(client.list_packages(parent=repo.name))
    assert [p.name for p in pkgs] == [f"{repo.name}/packages/ollama-gemma"]
    tags = {t.name.rsplit("/", 1)[1]: t.version for t in client.list_tags(parent=pkgs[0].name)}
    assert tags == {
        "latest": f"{pkgs[0].name}/versions/{d2}",
        "v1": f"{pkgs[0].name}/versions/{d1}",
    }
    client.delete_package(name=pkgs[0].name).result(timeout=30)
    assert list(client.list_docker_images(parent=repo.name)) == []
    with pytest.raises(exceptions.NotFound):
        client.list_tags(parent=pkgs[0].name)


def test_delete_repository_deletes_images(
    local_gcp: LocalGcp, client: ar.ArtifactRegistryClient
) -> None:
    repo = _create(client)
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    local_gcp.emulator.artifact_registry.push_image(
        PROJECT, "us-central1", "ollama", "img", ["t"], digest
    )
    client.delete_repository(name=repo.name).result(timeout=30)
    _create(client)
    assert list(client.list_docker_images(parent=repo.name)) == []
    assert (
        local_gcp.emulator.artifact_registry.find_image(
            f"us-central1-docker.pkg.dev/{PROJECT}/ollama/img:t"
        )
        is None
    )


def test_list_pagination(client: ar.ArtifactRegistryClient) -> None:
    for i in range(3):
        _create(client, f"repo-{i}")
    page = client.list_repositories(request={"parent": LOC, "page_size": 2})
    assert [r.name.rsplit("/", 1)[1] for r in page] == ["repo-0", "repo-1", "repo-2"]
