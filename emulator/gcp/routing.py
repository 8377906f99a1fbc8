"""Route primitives every API module uses, and list pagination.

Each API is a backend class (state + validation, no HTTP) and a `routes(emulator)` function
returning `Route`s: a method, a path template (`{var}` = one path segment, `{var=**}` = the rest,
`:verb` suffix allowed on the last segment) and a handler taking a `Call`. Handlers return a
JSON-able dict, a proto(-plus) message, a Starlette `Response` or None (`{}`); a coroutine
handler runs after the dispatcher released the emulator's lock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from emulator.gcp.errors import invalid_argument
from emulator.gcp.protojson import JsonMessage

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


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


def lenient_page(items: list[Any], page_size: int, page_token: str) -> tuple[list[Any], str]:
    """One page as Cloud Build and Cloud Run list: sizes outside 1..1000 mean 100, an unreadable
    token the first page; the next page token is "" on the last page."""
    start = int(page_token) if page_token.isdigit() else 0
    size = page_size if 0 < page_size <= 1000 else 100
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
