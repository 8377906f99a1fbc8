"""Where prompts come from and results go: a Cloud Storage prefix or a local directory.

One small interface, two back ends. Names are relative to the store's base (a bucket prefix
ending in ``/``, or a directory). ``create`` never overwrites: Cloud Storage uploads carry
``if_generation_match=0``; local files are written to a hidden temporary name and hard-linked
into place, which fails if the name exists (and a killed process never leaves half a file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import google.cloud.storage as storage
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry

from tasks.errors import (
    ConfigurationError,
    ObjectChangedError,
    ObjectExistsError,
    google_errors,
)

READ_CHUNK_BYTES = 4 * 1024 * 1024
_GCS_RETRY = Retry(initial=0.5, maximum=10.0, multiplier=2.0, timeout=120.0)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str  # relative to the store's base
    size: int
    generation: int | None = None  # Cloud Storage generation; None for local files


class ObjectStore(Protocol):
    base_uri: str  # "gs://bucket/prefix/" or "/abs/dir/"

    def uri_of(self, name: str) -> str: ...
    def list(self, prefix: str = "", match_glob: str | None = None) -> Iterator[ObjectInfo]: ...
    def stat(self, name: str) -> ObjectInfo | None: ...
    def open_read(self, name: str) -> IO[bytes]: ...
    def read_bytes(self, name: str) -> bytes: ...
    def create(self, name: str, data: bytes) -> None: ...
    def put(self, name: str, data: bytes) -> None: ...
    def delete(self, name: str, generation: int | None = None) -> None: ...
    def read_versioned(self, name: str) -> tuple[bytes, int] | None: ...
    def write_if(self, name: str, data: bytes, generation: int) -> int: ...


def glob_regex(glob: str) -> re.Pattern[str]:
    """Cloud Storage's ``matchGlob`` (JSON API objects.list, "List objects and prefixes using
    glob"), so a local directory lists what a bucket would: ``*`` and ``?`` never cross ``/``;
    ``**`` does (``a/**/b`` also matches ``a/b``); ``[ab]``, ``[!ab]``, ``{x,y}``, ``\\c``."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            whole = (i == 0 or glob[i - 1] == "/") and glob[i + 2 : i + 3] == "/"
            out.append("(?:.*/)?" if whole else ".*")
            i += 3 if whole else 2
            continue
        c = glob[i]
        end = glob.find("]" if c == "[" else "}", i + 2 if c == "[" else i)
        if c in "[{" and end < 0:
            raise ConfigurationError(f"unterminated {c!r} in the glob {glob!r}")
        if c == "[":
            body = glob[i + 1 : end]
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
            continue
        if c == "{":
            out.append("(?:" + "|".join(map(re.escape, glob[i + 1 : end].split(","))) + ")")
            i = end + 1
            continue
        if c == "\\" and i + 1 < len(glob):
            c, i = glob[i + 1], i + 1
            out.append(re.escape(c))
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c)))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def escape_glob(text: str) -> str:
    """``text`` as a glob that matches only itself."""
    return re.sub(r"([*?\[\]{}\\])", r"\\\1", text)


def split_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/path`` → ``("bucket", "path")``; a clear error for anything else."""
    if not uri.startswith("gs://"):
        raise ConfigurationError(f"not a gs:// URI: {uri!r}")
    bucket, _, path = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ConfigurationError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, path


class GcsStore:
    def __init__(self, client: storage.Client, bucket: str, prefix: str) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self._client = client
        self._bucket = client.bucket(bucket)
        self.bucket_name = bucket
        self.prefix = prefix
        self.base_uri = f"gs://{bucket}/{prefix}"

    def uri_of(self, name: str) -> str:
        return self.base_uri + name

    def list(self, prefix: str = "", match_glob: str | None = None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix``; with ``match_glob`` (relative to the store's base), only
        those Cloud Storage itself matches (``matchGlob``: the bucket filters, not this loop)."""
        glob = escape_glob(self.prefix) + match_glob if match_glob else None
        with google_errors(f"list the objects under {self.base_uri}{prefix}"):
            for blob in self._client.list_blobs(
                self.bucket_name, prefix=self.prefix + prefix, match_glob=glob
            ):
                name = blob.name[len(self.prefix) :]
                if name and not name.endswith("/"):
                    yield ObjectInfo(name, int(blob.size or 0), blob.generation)

    def stat(self, name: str) -> ObjectInfo | None:
        with google_errors(f"read the metadata of {self.uri_of(name)}"):
            blob = self._bucket.get_blob(self.prefix + name)
        return None if blob is None else ObjectInfo(name, int(blob.size or 0), blob.generation)

    def open_read(self, name: str) -> IO[bytes]:
        blob = self._bucket.blob(self.prefix + name)
        with google_errors(f"read {self.uri_of(name)}"):
            reader: IO[bytes] = blob.open("rb", chunk_size=READ_CHUNK_BYTES, retry=_GCS_RETRY)
        return reader

    def read_bytes(self, name: str) -> bytes:
        with google_errors(f"read {self.uri_of(name)}"):
            blob = self._bucket.blob(self.prefix + name)
            data: bytes = blob.download_as_bytes(retry=_GCS_RETRY)
        return data

    def create(self, name: str, data: bytes) -> None:
        blob = self._bucket.blob(self.prefix + name)
        try:
            # With a generation precondition the upload is safe to retry, and it is retried.
            with google_errors(f"create {self.uri_of(name)}"):
                blob.upload_from_string(
                    data, content_type="application/x-ndjson", if_generation_match=0
                )
        except gexc.PreconditionFailed as exc:
            # A retried upload whose first attempt landed looks the same as a real collision.
            if self.read_bytes(name) == data:
                return
            raise ObjectExistsError(self.uri_of(name)) from exc

    def put(self, name: str, data: bytes) -> None:
        blob = self._bucket.blob(self.prefix + name)
        with google_errors(f"write {self.uri_of(name)}"):
            blob.upload_from_string(data, content_type="application/json", retry=_GCS_RETRY)

    def delete(self, name: str, generation: int | None = None) -> None:
        with contextlib.suppress(gexc.NotFound), google_errors(f"delete {self.uri_of(name)}"):
            self._bucket.blob(self.prefix + name).delete(
                if_generation_match=generation, retry=_GCS_RETRY
            )

    def read_versioned(self, name: str) -> tuple[bytes, int] | None:
        """The object's bytes and generation, or None when it does not exist."""
        with contextlib.suppress(gexc.NotFound), google_errors(f"read {self.uri_of(name)}"):
            blob = self._bucket.get_blob(self.prefix + name)
            if blob is not None:
                data: bytes = blob.download_as_bytes(if_generation_match=blob.generation)
                return data, int(blob.generation)
        return None

    def write_if(self, name: str, data: bytes, generation: int) -> int:
        """Write ``name`` only if its generation is ``generation`` (0: only if it does not
        exist); returns the new generation, ``ObjectChangedError`` when it changed."""
        blob = self._bucket.blob(self.prefix + name)
        try:
            with google_errors(f"write {self.uri_of(name)}"):
                blob.upload_from_string(
                    data, content_type="application/json", if_generation_match=generation
                )
        except gexc.PreconditionFailed as exc:
            raise ObjectChangedError(self.uri_of(name)) from exc
        return int(blob.generation)


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.base_uri = str(self.root) + os.sep

    def _path(self, name: str) -> Path:
        return self.root / name

    def uri_of(self, name: str) -> str:
        return str(self._path(name))

    def list(self, prefix: str = "", match_glob: str | None = None) -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        pattern = glob_regex(match_glob) if match_glob else None
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue  # temporary files of an unfinished create
                path = Path(dirpath, filename)
                name = path.relative_to(self.root).as_posix()
                if name.startswith(prefix) and (pattern is None or pattern.match(name)):
                    yield ObjectInfo(name, path.stat().st_size)

    def stat(self, name: str) -> ObjectInfo | None:
        path = self._path(name)
        return ObjectInfo(name, path.stat().st_size) if path.is_file() else None

    def open_read(self, name: str) -> IO[bytes]:
        return open(self._path(name), "rb")

    def read_bytes(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def _write_temp(self, name: str, data: bytes) -> Path:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return temp

    def create(self, name: str, data: bytes) -> None:
        temp = self._write_temp(name, data)
        try:
            os.link(temp, self._path(name))
        except FileExistsError as exc:
            raise ObjectExistsError(self.uri_of(name)) from exc
        finally:
            temp.unlink()

    def put(self, name: str, data: bytes) -> None:
        os.replace(self._write_temp(name, data), self._path(name))

    def delete(self, name: str, generation: int | None = None) -> None:
        if generation is None:
            self._path(name).unlink(missing_ok=True)
            return
        with self._locked():  # generation-matched, as Cloud Storage's if_generation_match
            current = self._read_versioned(name)
            if current is not None and current[1] != generation:
                raise ObjectChangedError(self.uri_of(name))
            self._path(name).unlink(missing_ok=True)

    def read_versioned(self, name: str) -> tuple[bytes, int] | None:
        with self._locked():
            return self._read_versioned(name)

    def _read_versioned(self, name: str) -> tuple[bytes, int] | None:
        try:
            with open(self._path(name), "rb") as handle:
                # A file is replaced, never changed in place: its inode and mtime are its
                # generation (a local stand-in for Cloud Storage's).
                stat = os.fstat(handle.fileno())
                return handle.read(), (stat.st_ino << 20) ^ stat.st_mtime_ns
        except FileNotFoundError:
            return None

    def write_if(self, name: str, data: bytes, generation: int) -> int:
        with self._locked():
            current = self._read_versioned(name)
            if (current[1] if current else 0) != generation:
                raise ObjectChangedError(self.uri_of(name))
            self.put(name, data)
            written = self._read_versioned(name)
            assert written is not None
            return written[1]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Compare-and-swap between local processes: an advisory lock on the directory itself
        (nothing is left behind)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def open_store(uri: str, client: storage.Client | None = None) -> GcsStore | LocalStore:
    """A store rooted at ``uri`` (a ``gs://bucket/prefix`` or a local directory)."""
    if uri.startswith("gs://"):
        bucket, prefix = split_gs_uri(uri)
        if client is None:
            raise ConfigurationError("a gs:// location needs a storage client")
        return GcsStore(client, bucket, prefix)
    if "://" in uri:
        raise ConfigurationError(
            f"unsupported location {uri!r}: use gs://bucket/path or a local path"
        )
    return LocalStore(Path(uri).expanduser())
