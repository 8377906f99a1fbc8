"""One error type, rendered as Google's JSON APIs render it.

`GoogleApiError` renders as Google's JSON error body, so `google.api_core` raises the same class
(from the HTTP status) and `.reason` (from the `ErrorInfo` detail) as Google. Inside a finished
long-running operation the same error is rendered with its gRPC code (`to_status_json`).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

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
