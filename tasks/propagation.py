"""Google's eventual consistency, waited out in the open: a log line per wait, a bounded deadline
(a setting), and past it an error that names what is missing.

- A new IAM binding. "Changes to allow or deny policies typically propagate in 2 minutes, but
  could potentially take 7 minutes or longer" (Google, "Access change propagation",
  https://cloud.google.com/iam/docs/access-change-propagation). Until then Cloud Run's ingress
  answers a new ``roles/run.invoker`` member 403, exactly as it answers a caller without the role:
  :func:`through_invoker_propagation` retries that 403 (the smoke test's first request;
  :func:`wait_for_invoker`'s probe before a batch) for ``INVOKER_PROPAGATION_TIMEOUT_SECONDS``.
- A new service account. IAM is eventually consistent; Cloud Run refuses a runtime account it
  cannot see yet with 403 "Permission 'iam.serviceaccounts.actAs' denied on service account X (or
  it may not exist)." Terraform's google provider sleeps after creating an account and then wants
  3 consecutive good reads (GoogleCloudPlatform/magic-modules#10813, #14447), and still sees such
  errors. :func:`retry_act_as` retries that 403 while the account is younger than
  ``SERVICE_ACCOUNT_PROPAGATION_TIMEOUT_SECONDS`` (its creation time: ``tasks.iam``'s marker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from google.api_core import exceptions as gexc
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from tasks.errors import AccessDeniedError, InvokerRefusedError
from tasks.models import (
    INVOKER_PROPAGATION_TIMEOUT_SECONDS,
    SERVICE_ACCOUNT_PROPAGATION_TIMEOUT_SECONDS,
)

T = TypeVar("T")

INVOKER_ROLE = "roles/run.invoker"
FIRST_DELAY_SECONDS = 2.0
MAX_DELAY_SECONDS = 15.0
PROBE_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Clock:
    """Wall-clock time (an account's creation time is wall-clock too) and sleep; tests fake it."""

    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


def run_log(message: str) -> None:
    """Log to the Prefect run when there is one (the UI shows it), else to Python logging."""
    try:
        get_run_logger().info(message)
    except MissingContextError:
        logging.getLogger(__name__).info(message)


def retry_while_propagating(
    attempt: Callable[[], T],
    pending_since: Callable[[Exception], float | None],
    *,
    what: str,
    timeout_seconds: float,
    give_up: Callable[[Exception, float], Exception],
    log: Callable[[str], None] = run_log,
    clock: Clock | None = None,
) -> T:
    """``attempt()`` until it returns.

    An error for which ``pending_since`` gives a time (when the change it waits for was made) is
    retried until ``timeout_seconds`` after that time — 2 s doubling to 15 s between attempts, one
    log line per wait, a last attempt at the deadline — and then ``give_up(error, waited)`` is
    raised from it. Any other error passes at once.
    """
    clock = clock or Clock()
    delay = FIRST_DELAY_SECONDS
    while True:
        try:
            return attempt()
        except Exception as exc:
            since = pending_since(exc)
            if since is None:
                raise
            waited = max(0.0, clock.now() - since)
            if waited >= timeout_seconds:
                raise give_up(exc, waited) from exc
            log(f"waiting for {what} to propagate… ({waited:.0f} s of max {timeout_seconds:.0f} s)")
            clock.sleep(min(delay, timeout_seconds - waited))
            delay = min(delay * 2, MAX_DELAY_SECONDS)


# -- the runtime service account ----------------------------------------------------------------


def is_act_as_denied(exc: BaseException) -> bool:
    """Cloud Run's 403 for a runtime account the caller may not act as, or cannot see (yet)."""
    return isinstance(exc, gexc.Forbidden) and "iam.serviceaccounts.actas" in str(exc).lower()


def retry_act_as(
    send: Callable[[], T],
    account: str,
    created_at: Callable[[], float | None],
    timeout_seconds: float = SERVICE_ACCOUNT_PROPAGATION_TIMEOUT_SECONDS,
    *,
    log: Callable[[str], None] = run_log,
    clock: Clock | None = None,
) -> T:
    """``send()`` (a create or update of a service running as ``account``), retrying the 403
    actAs while ``account`` is younger than ``timeout_seconds``. ``created_at`` (POSIX time, None
    when unknown: then the 403 is final) is asked once, at the first such 403."""
    known: list[float | None] = []

    def pending_since(exc: Exception) -> float | None:
        if not is_act_as_denied(exc):
            return None
        if not known:
            known.append(created_at())
        return known[0]

    def give_up(exc: Exception, waited: float) -> Exception:
        return AccessDeniedError(
            f"Cloud Run refuses to run as {account}, created {waited:.0f} s ago: "
            f"{getattr(exc, 'message', exc)} The caller needs roles/iam.serviceAccountUser on "
            f"that account (iam.serviceAccounts.actAs); a new account may take a minute or two "
            f"to propagate (waited up to {timeout_seconds:.0f} s: "
            "service_account_propagation_timeout_seconds)."
        )

    return retry_while_propagating(
        send,
        pending_since,
        what=f"the service account {account}",
        timeout_seconds=timeout_seconds,
        give_up=give_up,
        log=log,
        clock=clock,
    )


# -- the invoker binding ------------------------------------------------------------------------


def probe_status(uri: str, auth: httpx.Auth) -> int | None:
    """The status of ``GET /`` with the caller's ID token; None when nothing answered (a cold
    start, the next step's to wait for)."""
    try:
        with httpx.Client(timeout=PROBE_TIMEOUT_SECONDS, auth=auth) as client:
            return client.get(f"{uri.rstrip('/')}/").status_code
    except httpx.TransportError:
        return None


def grant_command(service: str, member: str) -> str:
    """The gcloud command that grants ``member`` the invoker role on ``service`` (its resource
    name ``projects/P/locations/R/services/S``, or anything else as the service's name)."""
    parts = service.split("/")
    where = ""
    if len(parts) == 6 and parts[0::2] == ["projects", "locations", "services"]:
        service, where = parts[5], f" --region={parts[3]} --project={parts[1]}"
    return (
        f"gcloud run services add-iam-policy-binding {service}{where} --member={member} "
        f"--role={INVOKER_ROLE}"
    )


def through_invoker_propagation(
    send: Callable[[], T],
    uri: str,
    member: str,
    service: str,
    timeout_seconds: float = INVOKER_PROPAGATION_TIMEOUT_SECONDS,
    *,
    clock: Clock | None = None,
) -> tuple[T, float]:
    """``send()`` (a request from ``member`` to ``service`` at ``uri``) again while it raises
    ``InvokerRefusedError`` (the 403 a new invoker binding gets until it propagates). Returns its
    result and the seconds spent refused: 0 when the first attempt got through. Past
    ``timeout_seconds`` from the first refusal: ``AccessDeniedError`` naming the member and the
    role. Google checks IAM before a request reaches an instance: a refused attempt starts none,
    so the attempt that gets through is the one that waits out a cold start."""
    clock = clock or Clock()
    started = clock.now()
    last_attempt = [started]

    def attempt() -> T:
        last_attempt[0] = clock.now()
        return send()

    def pending_since(exc: Exception) -> float | None:
        return started if isinstance(exc, InvokerRefusedError) else None

    def give_up(exc: Exception, waited: float) -> Exception:
        return AccessDeniedError(
            f"{uri} still answers 403 to {member} after {waited:.0f} s: {member} needs "
            f"{INVOKER_ROLE} on the Cloud Run service {service} (deploy grants it to the caller; "
            f"or: {grant_command(service, member)}). A new binding typically takes 2, up to 7 "
            f"minutes to propagate; waited up to {timeout_seconds:.0f} s "
            "(invoker_propagation_timeout_seconds)."
        )

    result = retry_while_propagating(
        attempt,
        pending_since,
        what="the invoker binding",
        timeout_seconds=timeout_seconds,
        give_up=give_up,
        clock=clock,
    )
    return result, last_attempt[0] - started


@task(name="wait-for-invoker", cache_policy=NO_CACHE)
def wait_for_invoker(
    uri: str,
    auth: httpx.Auth,
    member: str,
    service: str,
    timeout_seconds: float = INVOKER_PROPAGATION_TIMEOUT_SECONDS,
    *,
    probe: Callable[[str, httpx.Auth], int | None] = probe_status,
    clock: Clock | None = None,
) -> float:
    """Probe ``service`` (``GET /`` at ``uri``) until it stops answering 403 to ``member``'s ID
    token (:func:`through_invoker_propagation`); returns the seconds spent refused. Any other
    answer (200, 404, 429, 503, none...) is for the next step to judge."""

    def attempt() -> None:
        if probe(uri, auth) == 403:
            raise InvokerRefusedError(f"{uri} answered 403 to {member}")

    _, waited = through_invoker_propagation(
        attempt, uri, member, service, timeout_seconds, clock=clock
    )
    return waited
