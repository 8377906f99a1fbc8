"""Who calls an API: the caller's email from the bearer access token of the request; Google's
401 UNAUTHENTICATED when there is none or it is invalid or expired."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from emulator.gcp.errors import GoogleApiError, credentials_missing, invalid_credentials

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


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
