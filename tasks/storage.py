"""Cloud Storage: the Cloud Build staging bucket and the source tarballs uploaded to it.

Like ``gcloud builds submit``: bucket ``<project>_cloudbuild``, objects
``source/<unix time>-<uuid hex>.tgz``. Each object carries our labels as custom metadata so teardown
and the sweep can find it.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import io
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.storage import Blob, Bucket, Client
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.deletions import Deletion, delete_resource, list_or_empty
from tasks.errors import ConfigurationError, google_errors
from tasks.iam import add_binding, remove_member
from tasks.retries import transient_retry

SOURCE_PREFIX = "source/"
STAGING_OBJECT_KIND = "staging object"
# Never part of the image: VCS and editor debris (in addition to .gcloudignore's own patterns).
_ALWAYS_SKIPPED = {".git", "__pycache__", ".DS_Store"}


@dataclass(frozen=True)
class StagedSource:
    bucket: str
    object_name: str
    generation: int

    @property
    def gs_uri(self) -> str:
        return f"gs://{self.bucket}/{self.object_name}"


def staging_bucket_name(project: str) -> str:
    """gcloud's default: ``<project>_cloudbuild`` (``google`` spelled ``elgoog``)."""
    return project.replace(":", "_").replace(".", "_").replace("google", "elgoog") + "_cloudbuild"


def _ignored(rel: Path, patterns: list[str]) -> bool:
    """gitignore-style matching as gcloud applies ``.gcloudignore`` (last matching line wins)."""
    if _ALWAYS_SKIPPED.intersection(rel.parts):
        return True
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = (pattern[1:] if negated else pattern).strip("/")
        if fnmatch.fnmatch(rel.as_posix(), glob) or fnmatch.fnmatch(rel.name, glob):
            ignored = not negated
    return ignored


def source_files(source_dir: Path) -> list[Path]:
    """Files of the build context (honouring ``.gcloudignore``), sorted, relative to the root."""
    if not (source_dir / "Dockerfile").is_file():
        raise ConfigurationError(
            f"{source_dir} has no Dockerfile; point source_dir at ollama-backend/"
        )
    ignore_file = source_dir / ".gcloudignore"
    lines = ignore_file.read_text().splitlines() if ignore_file.is_file() else []
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    files = [
        p.relative_to(source_dir)
        for p in source_dir.rglob("*")
        if p.is_file() and not _ignored(p.relative_to(source_dir), patterns)
    ]
    return sorted(files, key=lambda p: p.as_posix())


def source_hash(source_dir: Path, build_args: dict[str, str]) -> str:
    """SHA-256 of the build context (paths, modes, contents) and the build arguments."""
    digest = hashlib.sha256()
    for rel in source_files(source_dir):
        path = source_dir / rel
        digest.update(rel.as_posix().encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for key in sorted(build_args):
        digest.update(f"--build-arg {key}={build_args[key]}\0".encode())
    return digest.hexdigest()


def make_tarball(source_dir: Path) -> bytes:
    """A reproducible gzip tarball of the build context, members relative to its root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for rel in source_files(source_dir):
            info = tar.gettarinfo(str(source_dir / rel), arcname=rel.as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with (source_dir / rel).open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def ensure_bucket(
    cloud: GoogleCloud, client: Client, name: str, labels: dict[str, str], location: str
) -> Bucket:
    """The bucket ``name``, created in ``location`` (with ``labels``) when it does not exist.

    An existing bucket is used wherever it is: Cloud Build uses ``<project>_cloudbuild`` if it
    exists, and creating it in the build's region first is the way to keep the source there
    (terraform-google-modules/terraform-example-foundation#666; gcloud itself creates it in US).
    """
    with google_errors(f"create the staging bucket gs://{name}"):
        bucket = client.lookup_bucket(name, retry=transient_retry(cloud))
        if bucket is not None:
            return bucket
        try:
            bucket = client.bucket(name)
            bucket.labels = labels
            return client.create_bucket(bucket, location=location, retry=transient_retry(cloud))
        except gexc.Conflict:
            return client.get_bucket(name, retry=transient_retry(cloud))


@task(name="upload-source", cache_policy=NO_CACHE)
def upload_source(
    cloud: GoogleCloud, source_dir: Path, labels: dict[str, str], region: str
) -> StagedSource:
    """Tar ``source_dir`` and upload it as a new object (never overwriting one); the staging
    bucket is created in ``region`` (the deploy's) when it does not exist yet."""
    client = clients.storage_client(cloud)
    name = staging_bucket_name(cloud.project)
    bucket = ensure_bucket(cloud, client, name, labels, region)
    blob = bucket.blob(f"{SOURCE_PREFIX}{time.time():.6f}-{uuid.uuid4().hex}.tgz")
    blob.metadata = dict(labels)
    with google_errors(f"upload the build context to gs://{name}"):
        blob.upload_from_string(
            make_tarball(source_dir), content_type="application/gzip", if_generation_match=0
        )
    assert blob.generation is not None
    staged = StagedSource(name, blob.name or "", int(blob.generation))
    get_run_logger().info(
        "Uploaded the build context to %s (bucket location %s)", staged.gs_uri, bucket.location
    )
    return staged


def list_staging_objects(
    cloud: GoogleCloud, labels: dict[str, str], older_than: dt.datetime | None = None
) -> list[Blob]:
    """Staging objects whose metadata carries all ``labels`` (and older than ``older_than``)."""
    client = clients.storage_client(cloud)
    name = staging_bucket_name(cloud.project)
    with google_errors(f"list the staging objects in gs://{name}"):
        blobs = client.list_blobs(name, prefix=SOURCE_PREFIX, retry=transient_retry(cloud))
        return [
            b
            for b in blobs
            if all((b.metadata or {}).get(k) == v for k, v in labels.items())
            and (older_than is None or (b.time_created is not None and b.time_created < older_than))
        ]


@task(name="delete-staging-objects", cache_policy=NO_CACHE)
def delete_staging_objects(
    cloud: GoogleCloud, labels: dict[str, str], older_than: dt.datetime | None = None
) -> list[Deletion]:
    """Delete the staging objects carrying ``labels`` (and older than ``older_than``)."""
    return [
        delete_resource(
            STAGING_OBJECT_KIND,
            f"gs://{blob.bucket.name}/{blob.name}",
            partial(blob.delete, retry=transient_retry(cloud)),
        )
        for blob in list_or_empty(partial(list_staging_objects, cloud, labels, older_than))
    ]


def edit_bucket_policy(
    cloud: GoogleCloud, bucket_name: str, edit: Callable[[list[dict[str, Any]]], bool]
) -> bool:
    """Read-modify-write of a bucket's IAM policy; True if it changed."""
    bucket = clients.storage_client(cloud).bucket(bucket_name)
    with google_errors(f"change the IAM policy of gs://{bucket_name}"):
        policy = bucket.get_iam_policy(requested_policy_version=3, retry=transient_retry(cloud))
        if not edit(policy.bindings):
            return False
        bucket.set_iam_policy(policy, retry=transient_retry(cloud))
    return True


def grant_bucket_role(cloud: GoogleCloud, bucket_name: str, role: str, member: str) -> bool:
    """``role`` for ``member`` on the bucket only (not the project); True if granted now."""
    return edit_bucket_policy(cloud, bucket_name, partial(add_binding, role=role, member=member))


def revoke_bucket_members(cloud: GoogleCloud, bucket_name: str, members: set[str]) -> bool:
    return edit_bucket_policy(cloud, bucket_name, partial(remove_member, members=members))
