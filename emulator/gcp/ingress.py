"""The front door of one emulated Cloud Run service: `uri = http://127.0.0.1:<port>`.

Like Cloud Run's ingress, unless the service is public (allUsers, or the invoker IAM check
disabled): no token (`X-Serverless-Authorization` or `Authorization: Bearer`) → 403; a token whose
signature, audience (the service's URLs, custom audiences, or for a user's token gcloud's OAuth
clients: `auth.user_credentials.CLOUD_RUN_USER_AUDIENCES`) or expiry is wrong → 401; a valid
token whose email is not among the members its policy grants run.routes.invoke (roles/run.invoker
and the roles that include it: `emulator.gcp.iam.policy`; or allAuthenticatedUsers), or whose
binding is younger than the emulator's `iam_propagation_seconds` (on every URL: the service's and
each tag's) → 403; at most `max_instances × concurrency` requests in flight, streamed responses
counted until their last byte → 429 with Cloud Run's text. Accepted requests are forwarded,
streaming, to one of the serving revisions' Ollama-compatible servers, picked by their traffic
percent (503 while none is ready), each on one of that revision's instances
`cloud_run.instances` accounts for (waiting out a cold start). A tag URL is an `Ingress` of its
own whose one route is the tagged revision (sharing the service's instances and request log).

One uvicorn server per service, on its own thread and port; `stop()` closes it.

`set_outage(mode)` plays a service (or its region) dying, for tests and benchmarks (the control
endpoint `POST /_emulator/outage`): every connection open to it is cut at once (requests in flight
end in a reset), then `unavailable` answers each new request 503 with the front end's page and
`refused` stops listening (connections refused); `None` serves again on the same port. Not an
imitation of a documented Cloud Run answer: what a client sees of a region that died.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx
import uvicorn

from emulator.gcp.auth.user_credentials import CLOUD_RUN_USER_AUDIENCES

if TYPE_CHECKING:
    from emulator.gcp.cloud_run.instances import InstancePool

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
TokenVerifier = Callable[[str, str], Mapping[str, Any]]
Outage = Literal["unavailable", "refused"]
OUTAGES: tuple[str, ...] = ("unavailable", "refused")

NO_INSTANCE = (
    "The request was aborted because there was no available instance. Additional "
    "troubleshooting documentation can be found at: "
    "https://cloud.google.com/run/docs/troubleshooting#abort-request"
)
REQUEST_LOG_LIMIT = 100_000  # answered requests kept per service for the request_count metric
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass(frozen=True)
class IngressRules:
    """What the ingress enforces; replaced as a whole when the service or its policy changes."""

    audiences: tuple[str, ...] = ()
    members: frozenset[str] = frozenset()  # members of an invoking role
    invoker_iam_disabled: bool = False
    max_in_flight: int = 1
    timeout_seconds: float = 300.0
    revision: str = ""  # the serving revision, whose instances take the requests
    concurrency: int = 1  # per instance
    instance_based_billing: bool = True
    # Members granted recently: honoured from this `clock` time on (IAM propagation), not before.
    honoured_from: Mapping[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    def honoured_members(self) -> frozenset[str]:
        now = self.clock()
        return frozenset(m for m in self.members if self.honoured_from.get(m, now) <= now)


@dataclass(frozen=True)
class Target:
    """A revision requests may go to: its share of traffic and its server's URL."""

    revision: str
    percent: int
    url: str


@dataclass(frozen=True)
class Denial:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


# Cloud Run's front end answers with Google's HTML error page. The 403 sent to a request without
# a token, verbatim from `curl` against a private service in Google's Cloud Run tutorial
# (meteatamel/cloudrun-tutorial docs/auth.md, "Test the calling service"; Cloud Skills Boost lab
# transcripts show the same page): title "403 Forbidden", "Error: Forbidden", "Your client does not
# have permission to get URL <code>/</code> from this server.". The same 403 answers a valid ID
# token whose identity lacks run.invoker. A token that fails verification (malformed, expired,
# another audience) gets 401 "Error: Unauthorized", "Your client does not have permission to the
# requested URL <code>/</code>." with `WWW-Authenticate: Bearer error="invalid_token"
# error_description="The access token could not be verified"`, as users' reports of Cloud Run
# 401s quote it (Cloud Run's request log then says "The request was not authorized to invoke this
# service. The access token could not be verified.").
def _page(status: int, title: str, message: str) -> str:
    return (
        "<html><head>\n"
        '<meta http-equiv="content-type" content="text/html;charset=utf-8">\n'
        f"<title>{status} {title}</title>\n"
        "</head>\n"
        "<body text=#000000 bgcolor=#ffffff>\n"
        f"<h1>Error: {title}</h1>\n"
        f"<h2>{message}</h2>\n"
        "<h2></h2>\n"
        "</body></html>\n"
    )


def unauthorized(path: str) -> Denial:
    return Denial(
        401,
        _page(
            401,
            "Unauthorized",
            f"Your client does not have permission to the requested URL <code>{path}</code>.",
        ),
        {
            "www-authenticate": 'Bearer error="invalid_token" '
            'error_description="The access token could not be verified"'
        },
    )


def forbidden(path: str) -> Denial:
    return Denial(
        403,
        _page(
            403,
            "Forbidden",
            f"Your client does not have permission to get URL "
            f"<code>{path}</code> from this server.",
        ),
    )


def no_instance() -> Denial:
    return Denial(429, _page(429, "Server Error", NO_INSTANCE))


def unavailable() -> Denial:
    return Denial(503, _page(503, "Service Unavailable", "Service Unavailable"))


def bearer(headers: Mapping[str, str]) -> str | None:
    """The ID token: `X-Serverless-Authorization` wins over `Authorization` (as on Cloud Run)."""
    for name in ("x-serverless-authorization", "authorization"):
        value = headers.get(name)
        if value:
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


def check_access(
    headers: Mapping[str, str], path: str, rules: IngressRules, verify: TokenVerifier
) -> Denial | None:
    """None when the request may pass; else Cloud Run's 403 (no token, or an identity without
    run.invoker, or whose binding has not propagated yet) or 401 (a token that fails
    verification). A public service takes any request."""
    members = rules.honoured_members()
    if rules.invoker_iam_disabled or "allUsers" in members:
        return None
    token = bearer(headers)
    if token is None:
        return forbidden(path)
    claims: Mapping[str, Any] | None = None
    for audience in (*rules.audiences, *CLOUD_RUN_USER_AUDIENCES):
        try:
            claims = verify(token, audience)
            break
        except ValueError:
            continue
    if claims is None:
        return unauthorized(path)
    email = str(claims.get("email") or "")
    allowed = {"allAuthenticatedUsers", f"serviceAccount:{email}", f"user:{email}"}
    return None if email and allowed & members else forbidden(path)


class Ingress:
    """An ASGI app plus the uvicorn server that serves it on 127.0.0.1:<port>."""

    def __init__(
        self,
        verify: TokenVerifier,
        rules: IngressRules,
        port: int = 0,
        clock: Callable[[], float] = time.time,
        instances: InstancePool | None = None,
    ) -> None:
        self.verify = verify
        self.rules = rules
        self.instances = instances  # per-instance accounting (cloud_run.instances)
        self.targets: tuple[Target, ...] = ()  # replaced as a whole when traffic moves
        self.in_flight = 0
        self.in_flight_by_revision: Counter[str] = Counter()
        self.served = 0
        # (time, HTTP status, revision) of every request answered, denials included, as Cloud
        # Run counts them in run.googleapis.com/request_count; served by emulator/gcp/monitoring.
        self.answered: deque[tuple[float, int, str]] = deque(maxlen=REQUEST_LOG_LIMIT)
        self._clock = clock
        self.outage: Outage | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> int:
        """Reserve the port (the requested one when free, else any); returns it."""
        self._bound()
        return self._requested_port  # not the socket's: a refusing ingress has closed it

    def _bound(self) -> socket.socket:
        if self._socket is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", self._requested_port))
            except OSError:
                sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            self._requested_port = sock.getsockname()[1]  # a restart keeps the url
            self._socket = sock
        return self._socket

    @property
    def port(self) -> int:
        return self.bind()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route_to(self, targets: tuple[Target, ...]) -> None:
        self.targets = targets

    def pick(self) -> Target | None:
        """The revision one request goes to, by traffic percent (None: nothing serves)."""
        targets = [t for t in self.targets if t.percent > 0]
        if not targets:
            return None
        return random.choices(targets, weights=[t.percent for t in targets])[0]

    def start(self) -> None:
        """Serve on the bound port from a daemon thread; returns once the server is up."""
        if self._thread is not None:
            return
        sock = self._bound()
        config = uvicorn.Config(
            self, lifespan="on", log_level="warning", access_log=False, timeout_keep_alive=30
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"ingress-{self.port}", daemon=True
        )
        self._thread.start()
        while not server.started and self._thread.is_alive():
            threading.Event().wait(0.01)

    def stop(self) -> None:
        """Close the server and its port; waits for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server, self._thread, self._socket = None, None, None

    def set_outage(self, mode: Outage | None) -> None:
        """Cut every open connection and answer 503 (``unavailable``) or refuse connections
        (``refused``); ``None``: serve again. Returns once the connections are cut."""
        if mode is not None and mode not in OUTAGES:
            raise ValueError(f"outage must be one of {', '.join(OUTAGES)} or null, got {mode!r}")
        was, self.outage = self.outage, mode
        if mode is not None and self._loop is not None and self._server is not None:
            cut = asyncio.run_coroutine_threadsafe(self._cut(refuse=mode == "refused"), self._loop)
            cut.result(timeout=30)
        if mode is None and was == "refused" and self._thread is not None:
            self.stop()  # its listener is closed: serve again on a new one, same port
            self.start()

    async def _cut(self, *, refuse: bool) -> None:
        """On the ingress's own loop: stop listening (``refuse``), reset every connection and
        cancel the requests being forwarded."""
        server = self._server
        assert server is not None
        if refuse:
            for listener in server.servers:
                listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        for task in list(server.server_state.tasks):
            task.cancel()

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                self._client = httpx.AsyncClient(
                    timeout=None,
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("path", "/")
        rules = self.rules
        denial = unavailable() if self.outage else check_access(headers, path, rules, self.verify)
        if denial is None and self.in_flight >= rules.max_in_flight:
            denial = no_instance()
        target = self.pick()  # no await from here to the counts: traffic may move meanwhile
        revision = target.revision if target is not None else ""
        if denial is None and target is None:
            denial = unavailable()
        if denial is not None or target is None:
            self.answered.append((self._clock(), denial.status if denial else 503, revision))
            await _respond(send, denial or unavailable())
            return
        self.in_flight += 1
        self.in_flight_by_revision[revision] += 1
        status = 503
        pool, instance = self.instances, None
        try:
            if pool is not None:
                instance, cold_start = pool.acquire(
                    revision, rules.concurrency, rules.instance_based_billing
                )
                if cold_start > 0:  # a new instance: the request waits for it to start
                    await asyncio.sleep(cold_start)
            status = await self._forward(scope, receive, send, headers, target.url, rules)
        finally:
            if pool is not None and instance is not None:
                pool.release(instance)
            self.in_flight -= 1
            self.in_flight_by_revision[revision] -= 1
            self.served += 1
            self.answered.append((self._clock(), status, revision))

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Mapping[str, str],
        backend: str,
        rules: IngressRules,
    ) -> int:
        """Forward one request; returns the status answered (499: the client went away)."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 499
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        forward = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
        client_host = (scope.get("client") or ("127.0.0.1", 0))[0]
        forward["x-forwarded-for"] = client_host
        forward["x-forwarded-proto"] = "http"
        query = scope.get("query_string", b"").decode("latin-1")
        url = backend.rstrip("/") + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        url = url.split("?", 1)[0] + (f"?{query}" if query else "")
        assert self._client is not None
        timeout = httpx.Timeout(rules.timeout_seconds, connect=10.0)
        request = self._client.build_request(
            scope["method"], url, headers=forward, content=bytes(body), timeout=timeout
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError:
            await _respond(send, unavailable())
            return 503
        try:
            out = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in response.headers.multi_items()
                if k.lower() not in HOP_BY_HOP or k.lower() == "content-length"
            ]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": out}
            )
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (TimeoutError, httpx.HTTPError):
                pass  # the backend broke the stream: end ours as Cloud Run does
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        return response.status_code


async def _respond(send: Send, denial: Denial) -> None:
    body = denial.body.encode()
    headers = [
        (b"content-type", b"text/html; charset=UTF-8"),
        (b"content-length", str(len(body)).encode()),
        *[(k.encode(), v.encode()) for k, v in denial.headers.items()],
    ]
    await send({"type": "http.response.start", "status": denial.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
