"""Retry policies: only transient failures are retried, always with explicit delays and a deadline.

Per-request retries use ``google.api_core.retry.Retry`` (the official clients accept it as
``retry=``; it also decorates plain callables such as the IAM REST calls). Prefect task retries use
:func:`retry_transient` as their ``retry_condition_fn``.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry

from tasks.errors import is_transient

# Enabling an API takes effect within minutes; IAM reads settle within about a minute.
PROPAGATION_TIMEOUT_SECONDS = 300.0
IAM_CONSISTENCY_TIMEOUT_SECONDS = 120.0
TASK_RETRY_DELAYS_SECONDS = [2.0, 10.0, 30.0]


def transient_retry(timeout: float = PROPAGATION_TIMEOUT_SECONDS) -> Retry:
    """Retry 429, 5xx and SERVICE_DISABLED (API still propagating): 0.5 s doubling to 10 s."""
    return Retry(predicate=is_transient, initial=0.5, maximum=10.0, multiplier=2.0, timeout=timeout)


def _missing_or_transient(exc: BaseException) -> bool:
    return isinstance(exc, gexc.NotFound) or is_transient(exc)


def consistency_retry(timeout: float = IAM_CONSISTENCY_TIMEOUT_SECONDS) -> Retry:
    """Also retry NotFound: a resource just created may not be visible yet (IAM)."""
    return Retry(
        predicate=_missing_or_transient, initial=0.5, maximum=5.0, multiplier=2.0, timeout=timeout
    )


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a task only when it failed with a transient error."""
    try:
        state.result()
    except BaseException as exc:  # the task's own exception, re-raised by state.result()
        return is_transient(exc)
    return False
