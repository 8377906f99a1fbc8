"""The project's own errors, written down once, and the one boundary that raises them.

Hierarchy::

    OllamaCloudRunError            anything this project decided was wrong
    ├── ConfigurationError         bad parameters/environment, raised before any call (ValueError)
    ├── IdTokenError               no ID token could be fetched for an audience
    ├── QuotaExceededError         GPU (or CPU/memory) quota too small; names the quota and the fix
    ├── AccessDeniedError          a permission the caller lacks, or an API not enabled (``api``)
    ├── InvalidRequestError        Google rejected the request as invalid (400); carries its message
    ├── BuildFailedError           Cloud Build finished in a state other than SUCCESS
    ├── ServiceNotReadyError       Cloud Run did not become ready (failed or timed out)
    ├── SmokeTestError             the deployed service did not answer as expected
    ├── UnmanagedResourceError     a same-named resource this project did not make (no managed-by)
    └── DriftError                 a managed service differs from its declared spec or policy

The boundary: every Google call in ``tasks/`` runs inside ``with google_errors("<action>"):``. A
permanent Google error raised there (quota, permission, API not enabled, invalid argument) leaves
it as one of ours naming the fix, with Google's exception chained (``raise ... from``, so
``exc.__cause__`` is the ``google.api_core.exceptions`` instance). Every other error — NotFound and
Conflict that callers handle, 429/5xx/timeouts that retries handle — leaves unchanged, as Google's
own class. Quota messages are parsed in one place, :func:`parse_quota`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from google.api_core import exceptions as gexc


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
    """The caller lacks a permission; the message names what to grant or enable.

    ``api`` is set when the cause is an API not enabled in the project (``SERVICE_DISABLED``).
    """

    def __init__(self, message: str, *, api: str | None = None):
        super().__init__(message)
        self.api = api


class InvokerRefusedError(OllamaCloudRunError):
    """A Cloud Run service answered 403 to the caller's ID token: no run.invoker, or a new binding
    not honoured yet (``tasks.propagation`` waits that out)."""


class InvalidRequestError(OllamaCloudRunError):
    """Google rejected a request as invalid; the message is Google's."""


class BuildFailedError(OllamaCloudRunError):
    """A Cloud Build build ended in FAILURE, TIMEOUT, CANCELLED, ... (carries the log URL)."""


class ServiceNotReadyError(OllamaCloudRunError):
    """A Cloud Run service did not become ready."""


class SmokeTestError(OllamaCloudRunError):
    """The deployed service did not answer as expected."""


class UnmanagedResourceError(OllamaCloudRunError):
    """A same-named resource exists without ``managed-by=ollama-cloudrun``: not ours to change."""


class DriftError(OllamaCloudRunError):
    """A managed service was changed behind the project's back (spec or IAM policy)."""


_CAPACITY_MARKER = "Quota exceeded"


def parse_quota(message: str, *, requested: int | None = None) -> QuotaExceededError | None:
    """The quota error Google's ``message`` describes (naming what fits), or None if it is not one.

    Every message Cloud Run sends is recognised by ``tasks.quotas`` (its docstring quotes them).
    ``requested``: the instances the call asked for; then a bare "Quota exceeded" is a quota too
    (elsewhere it is a 429 rate limit, which retrying fixes).
    """
    from tasks import quotas  # tasks.quotas builds on this module's QuotaExceededError

    if quotas.is_quota_message(message) or (requested is not None and _CAPACITY_MARKER in message):
        return quotas.quota_error_from_message(message, requested=requested)
    return None


def is_service_disabled(exc: BaseException) -> bool:
    """A 403 ``SERVICE_DISABLED``: the API is not enabled yet or still propagating."""
    return isinstance(exc, gexc.Forbidden) and exc.reason == "SERVICE_DISABLED"


def disabled_api(exc: gexc.GoogleAPICallError) -> str:
    """The API a ``SERVICE_DISABLED`` error names (Google's ErrorInfo metadata ``service``)."""
    return str((getattr(exc, "metadata", None) or {}).get("service", ""))


def translate_google_error(
    exc: gexc.GoogleAPICallError, action: str, *, requested: int | None = None
) -> Exception:
    """A permanent Google error → our error naming the fix; any other error is returned as is."""
    message = str(exc.message or exc)
    quota = parse_quota(message, requested=requested)
    if quota is not None:
        return quota
    if is_service_disabled(exc):
        service = disabled_api(exc) or "the API"
        return AccessDeniedError(
            f"{service} is not enabled in this project (needed to {action}): enable it "
            f"(gcloud services enable {service}) or run the deploy flow, which enables it.",
            api=service,
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


@contextmanager
def google_errors(action: str, *, requested: int | None = None) -> Iterator[None]:
    """The one boundary around Google calls: ``with google_errors("create repository R"):``.

    ``action`` completes "needed to ..." in the messages; ``requested`` is the max instances a
    deploy asks for (quota messages then name it).
    """
    try:
        yield
    except gexc.GoogleAPICallError as exc:
        translated = translate_google_error(exc, action, requested=requested)
        if translated is exc:
            raise
        raise translated from exc


# -- the batch (tasks.batch) ------------------------------------------------------------------


class BatchError(OllamaCloudRunError):
    """Base class of the batch's own errors (``tasks.batch``)::

        BatchError
        ├── BatchInputError          the input cannot be read as prompts (also ConfigurationError)
        ├── OutputLocationError      the output overlaps the input or cannot be written (also
        │                            ConfigurationError); found before any prompt is sent
        ├── ObjectExistsError        a create-only write found its name taken
        │   └── ObjectChangedError   a generation-matched write found another generation
        ├── LeaseHeldError           another run holds the output's lease (exit 2 from the CLI)
        ├── SchemaVersionError       a record, manifest or lease of a schema_version not known
        ├── IncompleteResponseError  a response ended before its final part (transient)
        └── BatchFailedError         the run wrote everything but broke its failure policy

    A bad input *line* is no exception: it becomes an error record (``tasks.batch.records``).
    """


class BatchInputError(BatchError, ConfigurationError):
    """The batch's input location names nothing readable: unsupported scheme or file type, or no
    file matches."""


class OutputLocationError(BatchError, ConfigurationError):
    """The batch's output overlaps its input or cannot be written; found before any prompt."""


class ObjectExistsError(BatchError):
    """A create-only write found the name already taken (another run, or an earlier attempt)."""


class IncompleteResponseError(BatchError):
    """A response ended before its final part (a stream cut short, no choices): retried."""


class BatchFailedError(BatchError):
    """The run wrote every shard and its manifest, but more prompts (or input lines) failed than
    its failure policy allows (``tasks.batch.policy``): the flow run ends Failed."""


class ObjectChangedError(ObjectExistsError):
    """A generation-matched write found the object at another generation (someone wrote it)."""


class LeaseHeldError(BatchError):
    """Another run holds the output's lease (``tasks.batch.lease``); nothing was sent."""

    exit_code = 2  # the CLI's "refused to start" status, as for bad parameters


class SchemaVersionError(BatchError):
    """A record, manifest or lease carries a ``schema_version`` this code does not know (it was
    written by a newer ollama-cloudrun): refused rather than misread."""
