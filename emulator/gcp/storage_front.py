"""Cloud Storage's JSON API in front of fake-gcs-server: what it lacks, served as GCS serves it.

Every request under `/storage/v1/`, `/upload/storage/v1/`, `/download/storage/v1/` goes to
fake-gcs-server unchanged (raw path, query, headers and bytes), except:

- `objects.list` with `matchGlob` (JSON API objects.list, "List objects and prefixes using glob",
  https://cloud.google.com/storage/docs/json_api/v1/objects/list): fake-gcs-server ignores the
  parameter and lists everything, so the front filters each page by the glob (`glob_regex`);
- bucket locations: fake-gcs-server reports its own `-location` for every bucket; the front
  remembers the `location` a bucket was inserted with (GCS's default: the `US` multi-region) and
  answers with it, upper-cased as GCS does, with its `locationType`;
- bucket IAM policies (`GET`/`PUT /storage/v1/b/{bucket}/iam`, JSON API buckets.getIamPolicy /
  setIamPolicy; `kind: storage#policy`, `resourceId: projects/_/buckets/NAME`), which Cloud Build
  consults when it fetches a build's source (emulator.gcp.cloud_build.identity).

Credentials are not checked: google-cloud-storage sends none to STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import base64
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
from google.iam.v1 import policy_pb2
from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import Response

from emulator.gcp.errors import GoogleApiError, invalid_argument, not_found
from emulator.gcp.iam.policy import identity_members, members_with, replace_policy

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

PREFIXES = ("/storage/v1/", "/upload/storage/v1/", "/download/storage/v1/")
DEFAULT_LOCATION = "US"  # buckets.insert: "Defaults to US" (JSON API Bucket resource, location)
MULTI_REGIONS = {"US", "EU", "ASIA"}
_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding"}
_BUCKET = re.compile(r"^/storage/v1/b/([^/]+)$")
_BUCKET_IAM = re.compile(r"^/storage/v1/b/([^/]+)/iam$")
_OBJECTS = re.compile(r"^/storage/v1/b/([^/]+)/o$")


def glob_regex(glob: str) -> re.Pattern[str]:
    """A `matchGlob` as GCS documents it: `*` any characters but `/`; `**` any characters,
    `/` included (`a/**/b` also matches `a/b`, a leading `**/` also the top level); `?` one
    character but `/`; `[abc]`, `[a-z]`, `[!abc]` one character of (not of) a set; `{x,y}` one of
    the strings; `\\c` the character c itself."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith("**", i):
            after = glob[i + 2 : i + 3]
            before = glob[i - 1] if i else "/"
            if after == "/" and before == "/":
                out.append("(?:.*/)?")  # zero or more whole directories
                i += 3
            else:
                out.append(".*")
                i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = glob.find("]", i + 2)
            if end < 0:
                raise invalid_argument(f"Invalid matchGlob: unterminated '[' in {glob!r}")
            body = glob[i + 1 : end]
            negate = body.startswith("!")
            chars = body[1:] if negate else body
            out.append(("[^" if negate else "[") + chars.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "{":
            end = glob.find("}", i)
            if end < 0:
                raise invalid_argument(f"Invalid matchGlob: unterminated '{{' in {glob!r}")
            options = glob[i + 1 : end].split(",")
            out.append("(?:" + "|".join(re.escape(o) for o in options) + ")")
            i = end + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def location_type(location: str) -> str:
    if location in MULTI_REGIONS:
        return "multi-region"
    return "region" if re.search(r"\d$", location) else "dual-region"


class StorageFront:
    """What the front adds to fake-gcs-server: bucket locations and bucket IAM policies."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._locations: dict[str, str] = {}
        self._policies: dict[str, policy_pb2.Policy] = {}

    def record_bucket(self, bucket: str, location: str | None) -> None:
        self._locations[bucket] = (location or DEFAULT_LOCATION).upper()
        self._policies.pop(bucket, None)  # a new bucket starts with an empty policy

    def forget_bucket(self, bucket: str) -> None:
        self._locations.pop(bucket, None)
        self._policies.pop(bucket, None)

    def location(self, bucket: str) -> str | None:
        return self._locations.get(bucket)

    def policy(self, bucket: str) -> policy_pb2.Policy:
        return self._policies.get(bucket) or policy_pb2.Policy(version=1, etag=b"\x08\x01")

    def set_policy(self, bucket: str, policy: policy_pb2.Policy) -> policy_pb2.Policy:
        self._policies[bucket] = replace_policy(self.policy(bucket), policy)
        return self._policies[bucket]

    def holds(self, bucket: str, email: str, permission: str) -> bool:
        """Whether the bucket's own policy grants `email` the permission (project-level grants
        are the caller's to add)."""
        return bool(identity_members(email) & members_with(self.policy(bucket), permission))

    def snapshot(self) -> dict[str, Any]:
        return {
            "locations": dict(self._locations),
            "policies": {b: json_format.MessageToDict(p) for b, p in self._policies.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._locations = dict(state.get("locations", {}))
        self._policies = {
            b: json_format.ParseDict(p, policy_pb2.Policy())
            for b, p in state.get("policies", {}).items()
        }

    def close(self) -> None:
        pass


def _policy_json(bucket: str, policy: policy_pb2.Policy) -> dict[str, Any]:
    data = json_format.MessageToDict(policy)
    data.setdefault("version", 1)
    data["etag"] = base64.b64encode(policy.etag).decode()
    return {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", **data}


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status_code=status, media_type="application/json")


class StorageProxy:
    """The ASGI endpoint: forwards to fake-gcs-server, adding what `StorageFront` keeps."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def front(self) -> StorageFront:
        return self.emulator.get(StorageFront)  # per call: reset() rebuilds backends

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except GoogleApiError as exc:
            return exc.response()

    async def _forward(self, request: Request, query: str | None = None) -> httpx.Response:
        base = self.emulator.config.storage_url
        if not base:
            raise GoogleApiError(500, "INTERNAL", "emulator.gcp has no Cloud Storage")
        raw = request.scope.get("raw_path") or request.url.path.encode()
        if query is None:
            query = request.scope.get("query_string", b"").decode("latin-1")
        url = base.rstrip("/") + raw.decode("latin-1") + (f"?{query}" if query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with httpx.AsyncClient(timeout=120) as client:
            upstream = await client.send(
                client.build_request(
                    request.method, url, headers=headers, content=await request.body()
                ),
                stream=True,
            )
            upstream._content = b"".join([c async for c in upstream.aiter_raw()])
            await upstream.aclose()
        return upstream

    @staticmethod
    def _relay(upstream: httpx.Response) -> Response:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
        return Response(upstream.content, status_code=upstream.status_code, headers=headers)

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        method = request.method
        if match := _BUCKET_IAM.match(path):
            return await self._iam(request, match.group(1))
        if method == "GET" and (match := _OBJECTS.match(path)):
            return await self._list_objects(request, match.group(1))
        sent = await request.body()
        upstream = await self._forward(request)
        if path == "/storage/v1/b" and upstream.status_code < 300:
            return self._with_locations(sent, method, upstream)
        if (match := _BUCKET.match(path)) and upstream.status_code < 300:
            if method == "DELETE":
                with self.emulator.lock:
                    self.front().forget_bucket(match.group(1))
                return self._relay(upstream)
            return self._with_locations(sent, method, upstream)
        return self._relay(upstream)

    def _with_locations(self, sent: bytes, method: str, upstream: httpx.Response) -> Response:
        data = json.loads(upstream.content)
        with self.emulator.lock:
            front = self.front()
            if method == "POST":  # buckets.insert
                front.record_bucket(data["name"], json.loads(sent or b"{}").get("location"))
            for bucket in data.get("items", [data]):
                location = front.location(bucket.get("name", ""))
                if location:
                    bucket["location"] = location
                    bucket["locationType"] = location_type(location)
        return _json(data, upstream.status_code)

    async def _list_objects(self, request: Request, bucket: str) -> Response:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "matchGlob"]
        glob = request.query_params.get("matchGlob")
        pattern = glob_regex(glob) if glob else None
        upstream = await self._forward(request, urlencode(params))
        if pattern is None or upstream.status_code >= 300:
            return self._relay(upstream)
        data = json.loads(upstream.content)
        data["items"] = [o for o in data.get("items", []) if pattern.match(o["name"])]
        if not data["items"]:
            del data["items"]
        return _json(data)

    async def _iam(self, request: Request, bucket: str) -> Response:
        if not await self._exists(bucket):
            raise not_found("The specified bucket does not exist.")
        sent = await request.body()
        with self.emulator.lock:
            front = self.front()
            if request.method == "GET":
                return _json(_policy_json(bucket, front.policy(bucket)))
            if request.method != "PUT":
                raise GoogleApiError(405, "INVALID_ARGUMENT", "Method not allowed")
            try:
                body = json.loads(sent or b"{}")
                policy = json_format.ParseDict(
                    body, policy_pb2.Policy(), ignore_unknown_fields=True
                )
            except (ValueError, json_format.ParseError) as exc:
                raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
            stored = front.set_policy(bucket, policy)
            self.emulator.save()
            return _json(_policy_json(bucket, stored))

    async def _exists(self, bucket: str) -> bool:
        base = str(self.emulator.config.storage_url or "").rstrip("/")
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(f"{base}/storage/v1/b/{bucket}")
        return response.status_code == 200
