"""Artifact Registry: the Docker repository and the images Cloud Build pushes into it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from google.api_core import exceptions as gexc
from google.cloud import artifactregistry_v1
from google.iam.v1 import iam_policy_pb2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients, idle
from tasks.clients import GoogleCloud
from tasks.deletions import Deletion, Outcome, delete_resource, list_or_empty
from tasks.errors import UnmanagedResourceError, google_errors
from tasks.models import MANAGED_BY_LABEL, MANAGED_BY_VALUE, is_managed, unmanaged_message
from tasks.retries import transient_retry

OPERATION_TIMEOUT_SECONDS = 300.0
REPOSITORY_KIND = "repository (with its images)"


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


@task(name="ensure-repository", cache_policy=NO_CACHE)
def ensure_repository(
    cloud: GoogleCloud,
    region: str,
    repository: str,
    labels: dict[str, str],
    adopt: bool = False,
) -> tuple[str, bool]:
    """Create the Docker repository, or get it when it exists. Returns (its name, created).

    An existing repository without ``managed-by=ollama-cloudrun`` is refused unless ``adopt``
    (then images are pushed into it as it is; teardown still needs ``force`` to delete it).
    """
    client = clients.artifact_registry_client(cloud)
    name = repository_name(cloud.project, region, repository)
    created = False
    with google_errors(f"create repository {name}"):
        try:
            repo = client.get_repository(name=name, retry=transient_retry(cloud))
        except gexc.NotFound:
            try:
                operation = client.create_repository(
                    parent=f"projects/{cloud.project}/locations/{region}",
                    repository=build_repository(labels),
                    repository_id=repository,
                    retry=transient_retry(cloud),
                )
                repo, created = operation.result(timeout=OPERATION_TIMEOUT_SECONDS), True
            except gexc.Conflict:
                repo = client.get_repository(name=name, retry=transient_retry(cloud))
    if not created and not adopt and not is_managed(repo.labels):
        raise UnmanagedResourceError(unmanaged_message("Artifact Registry repository", name))
    get_run_logger().info("Repository %s %s", repo.name, "created" if created else "exists")
    return repo.name, created


def get_repository(
    cloud: GoogleCloud, region: str, repository: str
) -> artifactregistry_v1.Repository | None:
    """The repository, or None when it does not exist."""
    client = clients.artifact_registry_client(cloud)
    name = repository_name(cloud.project, region, repository)
    with google_errors(f"read repository {name}"):
        try:
            return client.get_repository(name=name, retry=transient_retry(cloud))
        except gexc.NotFound:
            return None


@task(name="find-image-tag", cache_policy=NO_CACHE)
def find_image_tag(
    cloud: GoogleCloud, region: str, repository: str, image: str, tag: str
) -> ImageRef | None:
    """The image the tag points at, or None when the tag (or image, or repository) is absent."""
    client = clients.artifact_registry_client(cloud)
    package = client.package_path(cloud.project, region, repository, image)
    digest: str | None = None
    with google_errors(f"list the tags of {package}"):
        try:
            for found in client.list_tags(parent=package, retry=transient_retry(cloud)):
                if found.name.rsplit("/", 1)[-1] == tag:
                    digest = found.version.rsplit("/", 1)[-1]  # sha256:...
                    break
        except gexc.NotFound:
            pass
    if digest is None:
        return None
    return ImageRef(image_uri(cloud.project, region, repository, image, tag), digest)


@task(name="delete-repository", cache_policy=NO_CACHE)
def delete_repository(cloud: GoogleCloud, region: str, repository: str) -> Deletion:
    """Delete the repository and every image in it (already gone is success)."""
    client = clients.artifact_registry_client(cloud)
    name = repository_name(cloud.project, region, repository)
    return delete_resource(
        REPOSITORY_KIND,
        name,
        lambda: client.delete_repository(name=name, retry=transient_retry(cloud)).result(
            timeout=OPERATION_TIMEOUT_SECONDS
        ),
    )


def list_managed_repositories(
    cloud: GoogleCloud, region: str
) -> list[artifactregistry_v1.Repository]:
    """The repositories in ``region`` labelled ``managed-by=ollama-cloudrun``."""
    client = clients.artifact_registry_client(cloud)
    parent = f"projects/{cloud.project}/locations/{region}"
    with google_errors(f"list the repositories of {parent}"):
        repos = client.list_repositories(parent=parent, retry=transient_retry(cloud))
        return [r for r in repos if r.labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE]


def repository_of_image(image: str) -> str | None:
    """``REGION-docker.pkg.dev/P/REPO/IMAGE[:tag|@digest]`` → the repository's resource name."""
    host, _, path = image.partition("/")
    parts = path.split("/")
    if not host.endswith("-docker.pkg.dev") or len(parts) < 3:
        return None
    return repository_name(parts[0], host.removesuffix("-docker.pkg.dev"), parts[1])


@task(name="sweep-idle-repositories", cache_policy=NO_CACHE)
def sweep_idle_repositories(
    cloud: GoogleCloud,
    regions: list[str],
    at: float,
    idle_hours: float,
    images_in_use: set[str],
) -> list[Deletion]:
    """Delete the managed repositories (with their images) no remaining service runs an image
    of, once idle (tasks/idle.py, on their labels and update time). ``images_in_use``: the
    images of every service left, managed or not."""
    in_use = {repository_of_image(image) for image in images_in_use}
    looked: list[Deletion] = []
    for region in regions:
        for repo in list_or_empty(partial(list_managed_repositories, cloud, region)):
            why = idle.keep_reason(repo.name, repo.labels, frozenset())
            if why is None and repo.name in in_use:
                why = "a service runs an image from it"
            idle_why = idle.idle_reason(repo.labels, repo.update_time, at, idle_hours)
            if why is None and idle_why is None:
                why = f"updated within the last {idle_hours:g} h"
            if why is not None:
                looked.append(Deletion(REPOSITORY_KIND, repo.name, Outcome.KEPT, why))
                continue
            repo_id = repo.name.rsplit("/", 1)[-1]
            deletion = delete_repository.fn(cloud, region, repo_id)
            looked.append(deletion.because(f"no service uses it; {idle_why}"))
    return looked


def grant_repository_role(
    cloud: GoogleCloud, region: str, repository: str, role: str, member: str
) -> bool:
    """``role`` for ``member`` on the repository only (not the project); True if granted now."""
    client = clients.artifact_registry_client(cloud)
    name = repository_name(cloud.project, region, repository)
    with google_errors(f"grant {role} to {member} on {name}"):
        policy = client.get_iam_policy(
            request=iam_policy_pb2.GetIamPolicyRequest(resource=name),
            retry=transient_retry(cloud),
        )
        bindings = [b for b in policy.bindings if b.role == role and not b.condition.expression]
        if any(member in b.members for b in bindings):
            return False
        if bindings:
            bindings[0].members.append(member)
        else:
            policy.bindings.add(role=role, members=[member])
        client.set_iam_policy(
            request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy),
            retry=transient_retry(cloud),
        )
    return True
