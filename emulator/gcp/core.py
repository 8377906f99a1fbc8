"""The emulator's core: Google-shaped errors, long-running operations, config, the state registry
and the route primitives every API module uses.

Errors (one type): `GoogleApiError` renders as Google's JSON error body, so `google.api_core`
raises the same class (from the HTTP status) and `.reason` (from the `ErrorInfo` detail) as Google.
Inside a finished operation the same error is rendered with its gRPC code.

Each API module is a backend class (state + validation, no HTTP) and a `routes(emulator)` function
returning `Route`s: a method, a path template (`{var}` = one path segment, `{var=**}` = the rest,
`:verb` suffix allowed on the last segment) and a handler taking a `Call`. Handlers return a
JSON-able dict, a proto(-plus) message, a Starlette `Response` or None (`{}`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import proto
from google.protobuf import json_format
from google.protobuf.message import Message as PbMessage
from pydantic import BaseModel, Field
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from emulator.gcp.artifact_registry import ArtifactRegistryBackend
    from emulator.gcp.auth import TokenSigner
    from emulator.gcp.iam import IamBackend
    from emulator.gcp.service_usage import ServiceUsageBackend

# google.rpc.Code by canonical status name.
GRPC_CODES: dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"

# Titles Google uses in SERVICE_DISABLED messages and in Service Usage's `config.title`.
SERVICE_TITLES: dict[str, str] = {
    "artifactregistry.googleapis.com": "Artifact Registry API",
    "cloudbuild.googleapis.com": "Cloud Build API",
    "run.googleapis.com": "Cloud Run Admin API",
    "storage.googleapis.com": "Cloud Storage API",
    "storage-component.googleapis.com": "Cloud Storage",
    "iam.googleapis.com": "Identity and Access Management (IAM) API",
    "iamcredentials.googleapis.com": "IAM Service Account Credentials API",
    "serviceusage.googleapis.com": "Service Usage API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
    "cloudquotas.googleapis.com": "Cloud Quotas API",
    "logging.googleapis.com": "Cloud Logging API",
    "compute.googleapis.com": "Compute Engine API",
}


class GoogleApiError(Exception):
    """An error rendered exactly as Google's JSON APIs render it."""

    def __init__(
        self,
        http_status: int,
        status: str,
        message: str,
        reason: str | None = None,
        domain: str = "googleapis.com",
        metadata: dict[str, str] | None = None,
        extra_details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if status not in GRPC_CODES:
            raise ValueError(f"unknown google.rpc status {status!r}")
        self.http_status = http_status
        self.status = status
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.extra_details = list(extra_details or [])
        self.headers = dict(headers or {})

    @property
    def grpc_code(self) -> int:
        return GRPC_CODES[self.status]

    def details(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.reason:
            info: dict[str, Any] = {"@type": ERROR_INFO_TYPE, "reason": self.reason}
            info["domain"] = self.domain
            if self.metadata:
                info["metadata"] = self.metadata
            out.append(info)
        return out + self.extra_details

    def to_json(self) -> dict[str, Any]:
        """The HTTP error body: `{"error": {"code", "message", "status", "details"}}`."""
        body: dict[str, Any] = {
            "code": self.http_status,
            "message": self.message,
            "status": self.status,
        }
        details = self.details()
        if details:
            body["details"] = details
        return {"error": body}

    def to_status_json(self) -> dict[str, Any]:
        """A `google.rpc.Status` (the `error` of a finished long-running operation)."""
        body: dict[str, Any] = {"code": self.grpc_code, "message": self.message}
        details = self.details()
        if details:
            body["details"] = details
        return body

    def response(self) -> Response:
        return Response(
            json.dumps(self.to_json()),
            status_code=self.http_status,
            media_type="application/json; charset=UTF-8",
            headers=self.headers,
        )


def not_found(message: str, reason: str | None = None) -> GoogleApiError:
    return GoogleApiError(404, "NOT_FOUND", message, reason)


def already_exists(message: str, reason: str | None = None) -> GoogleApiError:
    return GoogleApiError(409, "ALREADY_EXISTS", message, reason)


def invalid_argument(message: str, reason: str | None = None) -> GoogleApiError:
    return GoogleApiError(400, "INVALID_ARGUMENT", message, reason)


def permission_denied(
    message: str, reason: str | None = None, metadata: dict[str, str] | None = None
) -> GoogleApiError:
    return GoogleApiError(403, "PERMISSION_DENIED", message, reason, metadata=metadata)


def failed_precondition(message: str, reason: str | None = None) -> GoogleApiError:
    return GoogleApiError(400, "FAILED_PRECONDITION", message, reason)


def resource_exhausted(message: str, reason: str | None = None) -> GoogleApiError:
    return GoogleApiError(429, "RESOURCE_EXHAUSTED", message, reason)


# Google's 401s, as its front end sends them for every JSON API (a capture of
# `curl -i https://apigee.googleapis.com/...` without a token: `www-authenticate: Bearer
# realm="https://accounts.google.com/"`, message "Request is missing required authentication
# credential. ...", ErrorInfo reason CREDENTIALS_MISSING with metadata service + method (the
# emulator sends `service` only: it knows no RPC method names); a captured Translation API 401 for
# a bad token adds `error="invalid_token"` to the challenge).
# The reasons and their ErrorInfo metadata are those of googleapis/googleapis
# google/api/error_reason.proto: CREDENTIALS_MISSING (no credentials), ACCESS_TOKEN_EXPIRED,
# ACCESS_TOKEN_TYPE_UNSUPPORTED (a token Google cannot use, e.g. an API key or an ID token sent as
# an access token); google-cloud-python#15087 quotes the message of an invalid/expired token.
MISSING_CREDENTIALS_MESSAGE = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
INVALID_CREDENTIALS_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_REALM = 'Bearer realm="https://accounts.google.com/"'


def unauthenticated(
    message: str, reason: str | None = None, service: str | None = None
) -> GoogleApiError:
    """401 UNAUTHENTICATED with Google's `WWW-Authenticate` challenge."""
    challenge = _REALM if reason == "CREDENTIALS_MISSING" else f'{_REALM}, error="invalid_token"'
    metadata = {"service": service} if service else None
    headers = {"www-authenticate": challenge}
    return GoogleApiError(
        401, "UNAUTHENTICATED", message, reason, metadata=metadata, headers=headers
    )


def credentials_missing(service: str | None = None) -> GoogleApiError:
    return unauthenticated(MISSING_CREDENTIALS_MESSAGE, "CREDENTIALS_MISSING", service)


def invalid_credentials(reason: str, service: str | None = None) -> GoogleApiError:
    """`reason`: ACCESS_TOKEN_EXPIRED or ACCESS_TOKEN_TYPE_UNSUPPORTED."""
    return unauthenticated(INVALID_CREDENTIALS_MESSAGE, reason, service)


def unimplemented(message: str) -> GoogleApiError:
    return GoogleApiError(501, "UNIMPLEMENTED", message)


# ---------------------------------------------------------------------------------------------
# Message serialisation: Google's JSON (camelCase names, enum names, no default values).

JsonMessage: TypeAlias = proto.Message | PbMessage | dict[str, Any]


def _pb(message: proto.Message | PbMessage) -> PbMessage:
    if isinstance(message, proto.Message):
        pb: PbMessage = type(message).pb(message)
        return pb
    return message


def message_to_json(message: JsonMessage) -> dict[str, Any]:
    """A message as Google's JSON renders it (a dict is returned unchanged)."""
    if isinstance(message, dict):
        return message
    return json_format.MessageToDict(_pb(message), preserving_proto_field_name=False)


def any_json(message: JsonMessage) -> dict[str, Any]:
    """A message packed as a JSON `google.protobuf.Any` (with its real `@type` URL).

    A dict must already carry its `@type`.
    """
    if isinstance(message, dict):
        if "@type" not in message:
            raise ValueError("a dict packed into an Any needs an '@type'")
        return message
    pb = _pb(message)
    return {"@type": f"type.googleapis.com/{pb.DESCRIPTOR.full_name}", **message_to_json(pb)}


def parse_message(cls: type[Any], body: dict[str, Any]) -> Any:
    """Parse a JSON request body into a proto-plus class; bad input is a 400 like Google's."""
    try:
        return cls.from_json(json.dumps(body), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Long-running operations: explicit state machines that advance on poll and with time.

Outcome: TypeAlias = tuple[JsonMessage | None, GoogleApiError | None]
Resolver: TypeAlias = Callable[[], Outcome | None]
MetadataSource: TypeAlias = JsonMessage | Callable[[], JsonMessage] | None


@dataclass
class _Operation:
    name: str
    metadata: MetadataSource
    resolve: Resolver | None
    polls_left: int
    done_at: float
    done: bool = False
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class Operations:
    """Every API's long-running operations, by full name.

    An operation is done once it has been polled `polls_until_done` times AND `done_at` has
    passed AND `resolve()` returns an outcome (`None` keeps it pending, e.g. a build still running).
    `resolve` returns exactly one of (response, error).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._ops: dict[str, _Operation] = {}
        self._clock = clock

    def create(
        self,
        name: str,
        metadata: MetadataSource,
        *,
        resolve: Resolver,
        polls_until_done: int = 0,
        done_at: float | None = None,
    ) -> dict[str, Any]:
        """Register an operation and return its first JSON (already done when nothing holds it)."""
        if name in self._ops:
            raise ValueError(f"operation {name} already exists")
        op = _Operation(
            name=name,
            metadata=metadata,
            resolve=resolve,
            polls_left=max(0, polls_until_done),
            done_at=done_at if done_at is not None else 0.0,
        )
        self._ops[name] = op
        self._advance(op)
        return self._json(op)

    def create_done(
        self, name: str, metadata: MetadataSource, response: JsonMessage
    ) -> dict[str, Any]:
        """An operation that is finished from the start (e.g. `operations/noop.DONE_OPERATION`)."""
        op = _Operation(name=name, metadata=metadata, resolve=None, polls_left=0, done_at=0.0)
        op.done, op.response = True, any_json(response)
        self._ops[name] = op
        return self._json(op)

    def get_json(self, name: str) -> dict[str, Any]:
        """One poll: advances the state machine and returns the operation's JSON."""
        op = self._ops.get(name)
        if op is None:
            raise not_found(f"Operation {name} not found.")
        if op.polls_left > 0:
            op.polls_left -= 1
        else:
            self._advance(op)
        return self._json(op)

    def is_done(self, name: str) -> bool:
        return name in self._ops and self._ops[name].done

    def names(self) -> list[str]:
        return sorted(self._ops)

    def _advance(self, op: _Operation) -> None:
        if op.done or op.polls_left > 0 or self._clock() < op.done_at or op.resolve is None:
            return
        outcome = op.resolve()
        if outcome is None:
            return
        response, error = outcome
        if (response is None) == (error is None):
            raise ValueError(f"operation {op.name}: resolve must give a response or an error")
        op.done = True
        op.response = any_json(response) if response is not None else None
        op.error = error.to_status_json() if error is not None else None

    def _json(self, op: _Operation) -> dict[str, Any]:
        out: dict[str, Any] = {"name": op.name}
        metadata = op.metadata() if callable(op.metadata) else op.metadata
        if metadata is not None:
            out["metadata"] = any_json(metadata)
        if op.done:
            out["done"] = True
            if op.error is not None:
                out["error"] = op.error
            else:
                out["response"] = op.response
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """Finished operations (pending ones cannot outlive the process that runs them)."""
        return [self._json(op) for op in self._ops.values() if op.done]

    def restore(self, ops: list[dict[str, Any]]) -> None:
        for data in ops:
            op = _Operation(
                name=data["name"],
                metadata=data.get("metadata"),
                resolve=None,
                polls_left=0,
                done_at=0.0,
                done=True,
                response=data.get("response"),
                error=data.get("error"),
            )
            self._ops[op.name] = op


# ---------------------------------------------------------------------------------------------
# Configuration and the state registry.


class EmulatorConfig(BaseModel):
    """Everything that shapes the emulator's behaviour; changeable at run time (POST
    /_emulator/config) except host, port and state_dir."""

    project: str = "local-project"
    host: str = "127.0.0.1"
    port: int = 0
    state_dir: Path | None = None
    ollama_engine: Literal["sim", "llama"] = "sim"
    stand_in_model: str = "smollm2:135m"
    sim_env: dict[str, str] = Field(default_factory=dict)
    build_seconds: float = Field(default=2.0, ge=0)
    propagation_delay_seconds: float = Field(default=0.0, ge=0)
    gpu_quota: int = Field(default=7, ge=0)
    token_lifetime_seconds: int = Field(default=3600, ge=1)
    operation_polls: int = Field(default=0, ge=0)
    storage_url: str | None = None

    model_config = {"extra": "forbid", "validate_assignment": True}


RUNTIME_CONFIG_FIELDS = frozenset(
    {
        "build_seconds",
        "propagation_delay_seconds",
        "gpu_quota",
        "token_lifetime_seconds",
        "operation_polls",
        "sim_env",
        "stand_in_model",
        "ollama_engine",
    }
)


class Backend(Protocol):
    """One emulated API's state. Knows nothing of HTTP."""

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


BackendFactory: TypeAlias = Callable[["Emulator"], Backend]


class Emulator:
    """The root object: config, operations, token signer and one backend per API.

    Backends are built from `factories` (name -> callable(emulator)); `reset()` rebuilds them.
    Handlers run on the event loop while holding `lock`; background threads (builds, service
    backends) take `lock` before touching state.
    """

    STATE_FILE = "state.json"

    def __init__(
        self,
        config: EmulatorConfig,
        signer: TokenSigner,
        factories: dict[str, BackendFactory],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.signer = signer
        self.clock = clock
        self.lock = threading.RLock()
        self._factories = dict(factories)
        self.operations = Operations(clock)
        self.backends: dict[str, Backend] = {}
        self._closed = False
        self._build_backends()

    def _build_backends(self) -> None:
        for name, factory in self._factories.items():
            self.backends[name] = factory(self)

    def backend(self, name: str) -> Any:
        try:
            return self.backends[name]
        except KeyError:
            raise unimplemented(f"the emulator has no {name} backend") from None

    @property
    def service_usage(self) -> ServiceUsageBackend:
        return self.backends["service_usage"]  # type: ignore[return-value]

    @property
    def artifact_registry(self) -> ArtifactRegistryBackend:
        return self.backends["artifact_registry"]  # type: ignore[return-value]

    @property
    def iam(self) -> IamBackend:
        return self.backends["iam"]  # type: ignore[return-value]

    @property
    def cloud_build(self) -> Any:
        return self.backend("cloud_build")

    @property
    def cloud_run(self) -> Any:
        return self.backend("cloud_run")

    def reset(self) -> None:
        """Back to an empty emulator (config and keys kept)."""
        with self.lock:
            self.close_backends()
            self.operations = Operations(self.clock)
            self._build_backends()
            self.save()

    def close_backends(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self.backends = {}

    def close(self) -> None:
        """Save and stop every backend (idempotent)."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self.save()
            self.close_backends()

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state (no keys or tokens) for GET /_emulator/state and persistence."""
        with self.lock:
            return {
                "config": json.loads(self.config.model_dump_json()),
                "backends": {name: b.snapshot() for name, b in self.backends.items()},
                "operations": self.operations.snapshot(),
            }

    def save(self) -> None:
        if self.config.state_dir is None:
            return
        state = self.snapshot()
        del state["config"]
        write_json_atomic(self.config.state_dir / self.STATE_FILE, state)

    def load(self) -> None:
        if self.config.state_dir is None:
            return
        path = self.config.state_dir / self.STATE_FILE
        if not path.exists():
            return
        state = json.loads(path.read_text())
        with self.lock:
            for name, data in state.get("backends", {}).items():
                if name in self.backends:
                    self.backends[name].restore(data)
            self.operations.restore(state.get("operations", []))


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def project_number(project_id: str) -> int:
    """A deterministic 12-digit project number (a numeric id is its own number)."""
    if project_id.isdigit():
        return int(project_id)
    digest = hashlib.sha256(project_id.encode()).hexdigest()
    return 100_000_000_000 + int(digest, 16) % 900_000_000_000


def rfc3339(ts: float) -> str:
    """A timestamp as Google's JSON writes it."""
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{base}.{int(ts * 1_000_000) % 1_000_000:06d}Z"


def require_enabled(emulator: Emulator, project: str, service_name: str) -> None:
    """403 SERVICE_DISABLED, as Google sends it, unless the API is enabled and has propagated."""
    su = emulator.service_usage
    project_id = su.resolve_project(project)
    enabled_at = su.enabled_at(project_id, service_name)
    delay = emulator.config.propagation_delay_seconds
    if enabled_at is not None and emulator.clock() >= enabled_at + delay:
        return
    number = project_number(project_id)
    title = SERVICE_TITLES.get(service_name, service_name)
    url = f"https://console.developers.google.com/apis/api/{service_name}/overview?project={number}"
    message = (
        f"{title} has not been used in project {number} before or it is disabled. "
        f"Enable it by visiting {url} then retry. If you enabled this API recently, wait a few "
        "minutes for the action to propagate to our systems and retry."
    )
    raise GoogleApiError(
        403,
        "PERMISSION_DENIED",
        message,
        reason="SERVICE_DISABLED",
        metadata={
            "service": service_name,
            "consumer": f"projects/{number}",
            "activationUrl": url,
            "serviceTitle": title,
            "containerInfo": str(number),
        },
        extra_details=[
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Google developers console API activation", "url": url}],
            },
        ],
    )


def bearer_token(request: Request, service: str | None = None) -> str:
    """The bearer token of the request; 401 CREDENTIALS_MISSING without one."""
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise credentials_missing(service)
    return token.strip()


def authenticate(request: Request, service: str | None = None) -> str:
    """The caller's email from an access token the emulator issued (or a JWT its key file's account
    signed itself); 401 UNAUTHENTICATED, as on Google, when there is none or it is invalid/expired.

    `service` (e.g. "run.googleapis.com") goes into the error's ErrorInfo metadata.
    """
    token = bearer_token(request, service)
    emulator: Emulator = request.app.state.emulator
    try:
        return emulator.signer.verify_access_token(token)
    except GoogleApiError as exc:  # the signer knows the reason, not the API called
        raise invalid_credentials(exc.reason or "ACCESS_TOKEN_TYPE_UNSUPPORTED", service) from None


# ---------------------------------------------------------------------------------------------
# Route primitives.


@dataclass
class Call:
    """One parsed API call handed to a route handler."""

    emulator: Emulator
    request: Request
    params: dict[str, str]
    query: QueryParams
    body: dict[str, Any]
    caller: str | None = None
    raw_body: bytes = b""

    def param(self, name: str) -> str:
        return self.params[name]


HandlerResult: TypeAlias = JsonMessage | Response | None
Handler: TypeAlias = Callable[[Call], HandlerResult | Awaitable[HandlerResult]]


CONTROL_PREFIX = "/_emulator/"  # the emulator's own endpoints: not Google's, no credentials


@dataclass(frozen=True)
class Route:
    """`method template -> handler`; `service` (e.g. "run.googleapis.com") gates the route on
    the API being enabled for the `{project}` path variable. Every route requires a valid access
    token (401 otherwise) unless `anonymous`: what Google serves without credentials (the OAuth
    token endpoint, the metadata server, the certs) and the emulator's own control endpoints
    (every path under `/_emulator/` is anonymous)."""

    method: str
    template: str
    handler: Handler
    service: str | None = None
    anonymous: bool = False
    segments: tuple[str, ...] = field(init=False, repr=False)
    verb: str | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.template.startswith(CONTROL_PREFIX):
            object.__setattr__(self, "anonymous", True)
        path = self.template
        last = path.rsplit("/", 1)[-1]
        verb = None
        if ":" in last:
            path, verb = path.rsplit(":", 1)
        stripped = path.strip("/")
        object.__setattr__(self, "segments", tuple(stripped.split("/")) if stripped else ())
        object.__setattr__(self, "verb", verb)

    def match(self, method: str, segments: list[str]) -> dict[str, str] | None:
        """Path variables when `segments` (already percent-decoded, one by one) match."""
        if method != self.method:
            return None
        segs = list(segments)
        if self.verb is not None:
            if not segs or not segs[-1].endswith(":" + self.verb):
                return None
            segs[-1] = segs[-1][: -len(self.verb) - 1]
        elif segs and ":" in segs[-1] and not self._tail_takes_colon():
            return None
        params: dict[str, str] = {}
        for i, pattern in enumerate(self.segments):
            if pattern.startswith("{") and pattern.endswith("=**}"):
                rest = segs[i:]
                if not rest or not all(rest):
                    return None
                params[pattern[1:-4]] = "/".join(rest)
                return params
            if i >= len(segs):
                return None
            if pattern.startswith("{") and pattern.endswith("}"):
                if not segs[i]:
                    return None
                params[pattern[1:-1]] = segs[i]
            elif pattern != segs[i]:
                return None
        return params if len(segs) == len(self.segments) else None

    def _tail_takes_colon(self) -> bool:
        # Docker image names carry ":" in "@sha256:..."; a verb-less variable takes any text.
        return bool(self.segments) and self.segments[-1].startswith("{")


def paginate(
    items: list[Any], page_size: str | int | None, page_token: str | None
) -> tuple[list[Any], str]:
    """One page of `items` and the next page token ("" on the last page), as list methods do."""
    try:
        size = int(page_size or 0)
        start = int(page_token or 0)
    except ValueError:
        raise invalid_argument("Invalid page size or page token.") from None
    if size < 0 or start < 0:
        raise invalid_argument("Invalid page size or page token.")
    size = size or 1000
    end = start + size
    return items[start:end], (str(end) if end < len(items) else "")


def gate_project(params: dict[str, str]) -> str | None:
    """The project whose API enablement gates a call: `{project}`, or for `projects/-/...`
    the project in a service-account email."""
    project = params.get("project")
    if project != "-":
        return project
    account = params.get("account", "")
    _, _, domain = account.partition("@")
    return domain.removesuffix(".iam.gserviceaccount.com") if domain else None
