"""The project's own errors, written down once.

Hierarchy::

    OllamaCloudRunError            anything this project decided was wrong
    ├── ConfigurationError         bad parameters/environment, raised before any call (ValueError)
    ├── IdTokenError               no ID token could be fetched for an audience
    ├── QuotaExceededError         GPU (or CPU/memory) quota too small; names the quota and the fix
    ├── AccessDeniedError          a permission the caller lacks; names the role or API to grant
    ├── InvalidRequestError        Google rejected the request as invalid (400); carries its message
    ├── BuildFailedError           Cloud Build finished in a state other than SUCCESS
    ├── ServiceNotReadyError       Cloud Run did not become ready (failed or timed out)
    └── SmokeTestError             the deployed service did not answer as expected

Google's own exceptions (``google.api_core.exceptions.*``) pass through untouched everywhere except
at one boundary, :func:`translate_google_error`, which the tasks use for errors that can never be
fixed by retrying (quota, permission, invalid argument) so the message names the fix. Transient
errors (429, 5xx, ``SERVICE_DISABLED`` right after enabling) stay Google's classes so retry
conditions can recognise them.
"""

from __future__ import annotations

import time

from google.api_core import exceptions as gexc

# SERVICE_DISABLED is transient only for APIs this process enabled recently (propagation);
# otherwise it is permanent and must fail at once. API name → time.monotonic() of enabling.
PROPAGATION_WINDOW_SECONDS = 900.0
_enabled_at: dict[str, float] = {}


def mark_enabled(services: list[str] | tuple[str, ...]) -> None:
    """Record that ``services`` were just enabled: their 403 SERVICE_DISABLED is now transient."""
    now = time.monotonic()
    for service in services:
        _enabled_at[service] = now


class OllamaCloudRunError(Exception):
    """Base class of every error this project raises itself."""


class ConfigurationError(OllamaCloudRunError, ValueError):
    """Bad parameters or environment, detected before any call to Google Cloud."""


class IdTokenError(OllamaCloudRunError):
    """No ID token could be fetched for an audience (the token itself is never included)."""


class QuotaExceededError(OllamaCloudRunError):
    """A quota is too small for the request; the message names the quota and what would fit."""

    def __init__(self, message: str, *, quota: str | None = None, max_fit: int | None = None):
        super().__init__(message)
        self.quota = quota
        self.max_fit = max_fit


class AccessDeniedError(OllamaCloudRunError):
    """The caller lacks a permission; the message names what to grant or enable."""


class InvalidRequestError(OllamaCloudRunError):
    """Google rejected a request as invalid; the message is Google's."""


class BuildFailedError(OllamaCloudRunError):
    """A Cloud Build build ended in FAILURE, TIMEOUT, CANCELLED, ... (carries the log URL)."""


class ServiceNotReadyError(OllamaCloudRunError):
    """A Cloud Run service did not become ready."""


class SmokeTestError(OllamaCloudRunError):
    """The deployed service did not answer as expected."""


def is_service_disabled(exc: BaseException) -> bool:
    """A 403 ``SERVICE_DISABLED``: the API is not enabled yet or still propagating."""
    return isinstance(exc, gexc.Forbidden) and exc.reason == "SERVICE_DISABLED"


def is_propagating(exc: BaseException) -> bool:
    """SERVICE_DISABLED for an API enabled within the propagation window."""
    if not is_service_disabled(exc):
        return False
    assert isinstance(exc, gexc.Forbidden)
    enabled = _enabled_at.get((exc.metadata or {}).get("service", ""))
    return enabled is not None and time.monotonic() - enabled < PROPAGATION_WINDOW_SECONDS


def is_transient(exc: BaseException) -> bool:
    """Errors that retrying can fix: 429, 5xx, deadline/timeouts, API enablement propagation."""
    if is_service_disabled(exc):
        return is_propagating(exc)
    if isinstance(exc, gexc.TooManyRequests):
        return not _is_quota_message(str(exc))
    return isinstance(
        exc,
        gexc.ServerError | gexc.DeadlineExceeded | gexc.RetryError | ConnectionError | TimeoutError,
    )


def _is_quota_message(message: str) -> bool:
    from tasks.quotas import is_quota_message  # tasks.quotas builds on this module

    return is_quota_message(message)


def quota_error(message: str, *, requested: int | None = None) -> QuotaExceededError:
    """Any of Google's quota messages → an error naming each quota and the instances that fit."""
    from tasks.quotas import quota_error_from_message

    return quota_error_from_message(message, requested=requested)


def translate_google_error(exc: gexc.GoogleAPICallError, action: str) -> Exception:
    """The one boundary: a permanent Google error → our error naming the fix; others unchanged."""
    message = str(exc.message or exc)
    if _is_quota_message(message):
        return quota_error(message)
    if is_service_disabled(exc):
        service = (getattr(exc, "metadata", None) or {}).get("service", "the API")
        return AccessDeniedError(
            f"{service} is not enabled in this project (needed to {action}): enable it "
            f"(gcloud services enable {service}) or run the deploy flow, which enables it."
        )
    if isinstance(exc, gexc.Forbidden):
        return AccessDeniedError(
            f"Permission denied while trying to {action}: {message} "
            "Grant the caller the role this step needs (for example roles/run.admin, "
            "roles/artifactregistry.admin, roles/cloudbuild.builds.editor, "
            "roles/iam.serviceAccountAdmin) or use credentials that have it."
        )
    if isinstance(exc, gexc.BadRequest):
        return InvalidRequestError(f"Google rejected the request to {action}: {message}")
    return exc
