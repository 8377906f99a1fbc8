"""A build's source: the `storageSource` tarball, read from the emulated Cloud Storage
(fake-gcs-server) and unpacked in memory; the build log is written back there.

`fetch_and_plan` is the slow part of creating a build (HTTP and Dockerfile parsing): it runs
outside the emulator's lock.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

import httpx
from google.cloud.devtools import cloudbuild_v1

from emulator.gcp.cloud_build.plan import BuildPlan, plan_build
from emulator.gcp.cloud_build.spec import Build, FailureType, StepFailure
from emulator.gcp.errors import GoogleApiError, invalid_argument


def unpack_source(data: bytes) -> dict[str, bytes]:
    """A source tarball (gzip or plain) as {relative path: content} for regular files."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            files: dict[str, bytes] = {}
            for member in tar.getmembers():
                name = posixpath.normpath(member.name.lstrip("/"))
                if not member.isfile() or name.startswith("..") or name == ".":
                    continue
                extracted = tar.extractfile(member)
                files[name] = extracted.read() if extracted is not None else b""
            return files
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StepFailure(
            f"failed to unpack the source archive: {exc}", FailureType.FETCH_SOURCE_FAILED
        ) from exc


class BuildStorage(Protocol):
    def fetch(self, bucket: str, name: str, generation: int | None) -> bytes: ...

    def write(self, bucket: str, name: str, data: bytes, project: str) -> None: ...


class GcsHttpStorage:
    """Reads sources and writes logs through fake-gcs-server's JSON API."""

    def __init__(self, base_url: Callable[[], str | None]) -> None:
        self._base_url = base_url

    def _url(self) -> str:
        url = self._base_url()
        if not url:
            raise GoogleApiError(
                500, "INTERNAL", "emulator.gcp has no Cloud Storage (config.storage_url is unset)"
            )
        return url.rstrip("/")

    def fetch(self, bucket: str, name: str, generation: int | None) -> bytes:
        params: dict[str, str] = {"alt": "media"}
        if generation:
            params["generation"] = str(generation)
        url = f"{self._url()}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        response = httpx.get(url, params=params, timeout=60)
        if response.status_code == 404:
            what = "object" if self._bucket_exists(bucket) else "bucket"
            raise invalid_argument(
                f"could not resolve source: googleapi: Error 404: The specified {what} does not "
                f"exist., notFound (gs://{bucket}/{name})"
            )
        response.raise_for_status()
        return response.content

    def _bucket_exists(self, bucket: str) -> bool:
        r = httpx.get(f"{self._url()}/storage/v1/b/{quote(bucket, safe='')}", timeout=30)
        return r.status_code == 200

    def write(self, bucket: str, name: str, data: bytes, project: str) -> None:
        if not self._bucket_exists(bucket):
            r = httpx.post(
                f"{self._url()}/storage/v1/b", params={"project": project}, json={"name": bucket}
            )
            if r.status_code not in (200, 409):
                r.raise_for_status()
        r = httpx.post(
            f"{self._url()}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
            params={"uploadType": "media", "name": name},
            content=data,
            headers={"Content-Type": "text/plain; charset=utf-8"},
            timeout=60,
        )
        r.raise_for_status()


def fetch_and_plan(storage: BuildStorage, build: Build) -> BuildPlan:
    """Fetch and unpack the build's source, then plan its steps (an unreadable archive is a
    planned FETCH_SOURCE_FAILED; a missing object is a 400 on the create call, as on Google)."""
    log = [f'starting build "{build.id}"', "", "FETCHSOURCE"]
    files: dict[str, bytes] = {}
    source = build.source.storage_source
    if source.bucket:
        uri = f"gs://{source.bucket}/{source.object_}"
        log.append(f"Fetching storage object: {uri}#{source.generation or ''}".rstrip("#"))
        data = storage.fetch(source.bucket, source.object_, source.generation or None)
        build.source_provenance.resolved_storage_source = cloudbuild_v1.StorageSource(
            bucket=source.bucket,
            object_=source.object_,
            generation=source.generation or 1,
        )
        try:
            files = unpack_source(data)
        except StepFailure as exc:
            plan = BuildPlan(failure=exc.message, failure_type=int(exc.failure_type))
            plan.log = [*log, f"ERROR: {exc.message}"]
            return plan
    elif build.source:
        raise invalid_argument(
            "emulator.gcp builds only from source.storageSource (a tarball in Cloud Storage)"
        )
    plan = plan_build(build, files)
    plan.log = [*log, "BUILD", *plan.log]
    return plan
