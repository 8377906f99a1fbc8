"""Google ID tokens for a private Cloud Run service, as an ``httpx.Auth``.

``ollama.AsyncClient(host=uri, auth=GoogleIdTokenAuth(uri, tokens))`` (or ``ollama.Client``,
``httpx``) then sends ``Authorization: Bearer <ID token>`` with the service's uri as audience;
clients that are not httpx (the batch's aiohttp backend) call ``aget_token`` and, after a 401,
``arefresh``. Tokens come from the caller's own credentials (``tasks.identity``, via
``clients.caller_identity(cloud)``), are refreshed ahead of expiry and once more when the service
answers 401. The token is never logged, never in a repr and never in an exception message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import AsyncGenerator, Generator

import httpx

from tasks.errors import IdTokenError
from tasks.identity import IdTokenSource


def _utcnow() -> dt.datetime:
    # google-auth keeps ``expiry`` as a naive UTC datetime.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class GoogleIdTokenAuth(httpx.Auth):
    """An ``httpx.Auth`` adding a fresh Google ID token for ``audience``; thread- and asyncio-safe.

    The refresh margin is capped at half the token's lifetime, so short-lived tokens (as an emulator
    may issue) are still reused instead of being fetched for every request.
    """

    def __init__(
        self, audience: str, tokens: IdTokenSource, *, refresh_margin_seconds: float = 300.0
    ) -> None:
        if not audience or not audience.startswith(("http://", "https://")):
            raise ValueError(
                f"audience must be the service's URL (http[s]://...), got {audience!r}"
            )
        if refresh_margin_seconds < 0:
            raise ValueError("refresh_margin_seconds must be >= 0")
        self.audience = audience
        self.refresh_margin_seconds = refresh_margin_seconds
        self._lock = threading.Lock()
        self._tokens = tokens
        self._token: str | None = None
        self._expiry: dt.datetime | None = None
        self._fetched_at: dt.datetime | None = None
        self.refresh_count = 0

    def __repr__(self) -> str:
        return f"GoogleIdTokenAuth(audience={self.audience!r})"

    # -- token cache -------------------------------------------------------------------------

    def _fresh_token(self) -> str | None:
        """The cached token when it is not yet within the refresh margin of its expiry."""
        token, expiry, fetched = self._token, self._expiry, self._fetched_at
        if token is None or expiry is None or fetched is None:
            return None
        lifetime = (expiry - fetched).total_seconds()
        margin = min(self.refresh_margin_seconds, max(lifetime, 0.0) / 2)
        if _utcnow() + dt.timedelta(seconds=margin) >= expiry:
            return None
        return token

    def _refresh_blocking(self, rejected: str | None = None) -> str:
        """Fetch a new token under the lock, unless another caller already replaced ``rejected``."""
        with self._lock:
            current = self._fresh_token()
            if current is not None and current != rejected:
                return current
            fetched_at = _utcnow()
            try:
                token, expiry = self._tokens.fetch(self.audience)
            except IdTokenError:
                raise
            except Exception as exc:
                raise IdTokenError(
                    f"Could not fetch a Google ID token for audience {self.audience}: "
                    f"{type(exc).__name__}"
                ) from exc
            if not token:
                raise IdTokenError(f"The ID token fetch for {self.audience} returned no token")
            self._token = token
            self._expiry = expiry
            self._fetched_at = fetched_at
            self.refresh_count += 1
            return str(token)

    def get_token(self) -> str:
        """A valid ID token (fetching or refreshing it if needed). Blocking."""
        token = self._fresh_token()
        return token if token is not None else self._refresh_blocking()

    async def aget_token(self) -> str:
        """A valid ID token; a refresh runs in a worker thread so the event loop never blocks."""
        token = self._fresh_token()
        return token if token is not None else await asyncio.to_thread(self._refresh_blocking)

    async def arefresh(self, rejected: str) -> str:
        """A token other than ``rejected`` (the service answered 401 to it)."""
        return await asyncio.to_thread(self._refresh_blocking, rejected)

    # -- httpx.Auth ----------------------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.get_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = self._refresh_blocking(rejected=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.aget_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = await self.arefresh(token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
