"""Retry policies: only transient failures are retried, always with explicit delays and a deadline.

One predicate decides what is transient, :func:`is_transient`. Per-request retries use
``google.api_core.retry.Retry`` built from it (the official clients accept it as ``retry=``; it
also decorates plain callables such as the IAM REST calls); Prefect task retries use
:func:`retry_transient` as their ``retry_condition_fn``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry

from tasks.clients import GoogleCloud
from tasks.errors import disabled_api, is_service_disabled, parse_quota

# Enabling an API takes effect within minutes; IAM reads settle within about a minute.
PROPAGATION_TIMEOUT_SECONDS = 300.0
PROPAGATION_WINDOW_SECONDS = 900.0
IAM_CONSISTENCY_TIMEOUT_SECONDS = 120.0
TASK_RETRY_DELAYS_SECONDS = [2.0, 10.0, 30.0]


def is_transient(exc: BaseException, enabled_at: Mapping[str, float] | None = None) -> bool:
    """Errors that retrying can fix: 429 (not a quota), 5xx, deadlines, timeouts, connection
    errors, and ``SERVICE_DISABLED`` for an API enabled (``enabled_at``: API → ``time.time()``)
    within the propagation window — otherwise an API not enabled is permanent."""
    if is_service_disabled(exc):
        assert isinstance(exc, gexc.Forbidden)
        enabled = (enabled_at or {}).get(disabled_api(exc))
        return enabled is not None and time.time() - enabled < PROPAGATION_WINDOW_SECONDS
    if isinstance(exc, gexc.TooManyRequests):
        return parse_quota(str(exc)) is None
    return isinstance(
        exc,
        gexc.ServerError | gexc.DeadlineExceeded | gexc.RetryError | ConnectionError | TimeoutError,
    )


def transient_retry(cloud: GoogleCloud, timeout: float = PROPAGATION_TIMEOUT_SECONDS) -> Retry:
    """Retry what :func:`is_transient` says for ``cloud``: 0.5 s doubling to 10 s."""

    def predicate(exc: BaseException) -> bool:
        return is_transient(exc, cloud.enabled_at)

    return Retry(predicate=predicate, initial=0.5, maximum=10.0, multiplier=2.0, timeout=timeout)


def consistency_retry(
    cloud: GoogleCloud, timeout: float = IAM_CONSISTENCY_TIMEOUT_SECONDS
) -> Retry:
    """Also retry NotFound: a resource just created may not be visible yet (IAM)."""

    def predicate(exc: BaseException) -> bool:
        return isinstance(exc, gexc.NotFound) or is_transient(exc, cloud.enabled_at)

    return Retry(predicate=predicate, initial=0.5, maximum=5.0, multiplier=2.0, timeout=timeout)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a task only when it failed with a transient error."""
    try:
        state.result()
    except BaseException as exc:  # the task's own exception, re-raised by state.result()
        return is_transient(exc)
    return False
