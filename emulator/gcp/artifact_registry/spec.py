"""Artifact Registry: names, image references and the checks Google makes on a new repository."""

from __future__ import annotations

import re

from google.cloud import artifactregistry_v1 as ar

from emulator.gcp.errors import invalid_argument

SERVICE = "artifactregistry.googleapis.com"
_REPO_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_LOCATION = re.compile(r"^([a-z]+-[a-z]+[0-9]+|us|europe|asia)$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
IMAGE_URI = re.compile(
    r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repository>[^/]+)/"
    r"(?P<image>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[\w][\w.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
ENTITY_NOT_FOUND = "Requested entity was not found."
DOCKER_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def validate_new_repository(location: str, repository_id: str, repository: ar.Repository) -> None:
    """Google's INVALID_ARGUMENTs on CreateRepository."""
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


def validate_digest(digest: str) -> None:
    if not _DIGEST.match(digest):
        raise invalid_argument(f"Invalid digest {digest!r}: expected sha256:<64 hex>.")
