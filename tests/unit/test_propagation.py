"""Waiting out Google's eventual consistency (tasks.propagation) on a fake clock: what is retried,
for how long, what is logged, and the error past the deadline."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
from google.api_core import exceptions as gexc

from tasks.errors import AccessDeniedError, InvokerRefusedError
from tasks.propagation import (
    Clock,
    is_act_as_denied,
    retry_act_as,
    retry_while_propagating,
    through_invoker_propagation,
    wait_for_invoker,
)

ACCOUNT = "ollama@p.iam.gserviceaccount.com"
ACT_AS = (
    f"Permission 'iam.serviceaccounts.actAs' denied on service account {ACCOUNT} "
    "(or it may not exist)."
)
MEMBER = "user:ada@example.com"


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    @property
    def clock(self) -> Clock:
        return Clock(now=lambda: self.t, sleep=self.sleep)


class Pending(Exception):
    pass


def failing(times: int, error: Callable[[], Exception], result: str = "done") -> Callable[[], str]:
    calls = iter(range(times + 1))

    def attempt() -> str:
        if next(calls) < times:
            raise error()
        return result

    return attempt


def test_retries_with_a_log_line_per_wait_until_it_succeeds() -> None:
    fake, lines = FakeClock(), []
    result = retry_while_propagating(
        failing(3, Pending),
        lambda exc: 1_000.0 if isinstance(exc, Pending) else None,
        what="the thing",
        timeout_seconds=60,
        give_up=lambda exc, waited: RuntimeError("gave up"),
        log=lines.append,
        clock=fake.clock,
    )
    assert result == "done"
    assert fake.sleeps == [2.0, 4.0, 8.0]
    assert lines == [
        "waiting for the thing to propagate… (0 s of max 60 s)",
        "waiting for the thing to propagate… (2 s of max 60 s)",
        "waiting for the thing to propagate… (6 s of max 60 s)",
    ]


def test_gives_up_at_the_deadline_after_a_last_attempt() -> None:
    fake, attempts = FakeClock(), []

    def attempt() -> None:
        attempts.append(fake.t)
        raise Pending("still")

    with pytest.raises(RuntimeError, match="gave up after 40 s") as info:
        retry_while_propagating(
            attempt,
            lambda exc: 1_000.0,
            what="x",
            timeout_seconds=40,
            give_up=lambda exc, waited: RuntimeError(f"gave up after {waited:.0f} s"),
            log=lambda line: None,
            clock=fake.clock,
        )
    assert isinstance(info.value.__cause__, Pending)
    assert fake.sleeps == [2.0, 4.0, 8.0, 15.0, 11.0]  # doubling, at most 15 s, to the deadline
    assert attempts[-1] == 1_040.0  # one last attempt exactly at the deadline


def test_the_deadline_counts_from_when_the_change_was_made() -> None:
    fake = FakeClock()
    with pytest.raises(RuntimeError):
        retry_while_propagating(
            failing(5, Pending),
            lambda exc: 1_000.0 - 100,  # made 100 s ago: past a 60 s deadline
            what="x",
            timeout_seconds=60,
            give_up=lambda exc, waited: RuntimeError(),
            log=lambda line: None,
            clock=fake.clock,
        )
    assert fake.sleeps == []


def test_other_errors_pass_at_once() -> None:
    fake = FakeClock()
    with pytest.raises(ValueError):
        retry_while_propagating(
            failing(1, ValueError),
            lambda exc: 1_000.0 if isinstance(exc, Pending) else None,
            what="x",
            timeout_seconds=60,
            give_up=lambda exc, waited: RuntimeError(),
            clock=fake.clock,
        )
    assert fake.sleeps == []


# -- the runtime service account ----------------------------------------------------------------


def test_act_as_denied_is_recognised() -> None:
    assert is_act_as_denied(gexc.Forbidden(ACT_AS))
    assert not is_act_as_denied(gexc.Forbidden("Permission 'run.services.create' denied"))
    assert not is_act_as_denied(gexc.BadRequest(ACT_AS))


def test_act_as_is_retried_while_the_account_is_young() -> None:
    fake, asked, lines = FakeClock(), [], []

    def created_at() -> float:
        asked.append(1)
        return 1_000.0 - 5

    result = retry_act_as(
        failing(2, lambda: gexc.Forbidden(ACT_AS)),
        ACCOUNT,
        created_at,
        180,
        log=lines.append,
        clock=fake.clock,
    )
    assert result == "done" and asked == [1]  # the account's age is read once
    assert lines[0] == f"waiting for the service account {ACCOUNT} to propagate… (5 s of max 180 s)"


def test_act_as_for_an_old_or_unknown_account_is_final() -> None:
    fake = FakeClock()
    with pytest.raises(AccessDeniedError) as info:
        retry_act_as(
            failing(1, lambda: gexc.Forbidden(ACT_AS)),
            ACCOUNT,
            lambda: 1_000.0 - 3_600,
            180,
            clock=fake.clock,
        )
    message = str(info.value)
    assert f"Cloud Run refuses to run as {ACCOUNT}, created 3600 s ago" in message
    assert "roles/iam.serviceAccountUser" in message and ACT_AS in message
    assert fake.sleeps == []
    # Not one of ours (no creation time): Google's error as it came.
    with pytest.raises(gexc.Forbidden):
        retry_act_as(failing(1, lambda: gexc.Forbidden(ACT_AS)), ACCOUNT, lambda: None)


def test_act_as_past_the_deadline_names_the_setting() -> None:
    fake = FakeClock()
    with pytest.raises(AccessDeniedError, match="service_account_propagation_timeout_seconds"):
        retry_act_as(
            failing(99, lambda: gexc.Forbidden(ACT_AS)),
            ACCOUNT,
            lambda: 1_000.0,
            20,
            log=lambda line: None,
            clock=fake.clock,
        )
    assert sum(fake.sleeps) == 20


# -- the invoker binding ------------------------------------------------------------------------


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="tasks.propagation"):
        yield caplog


def probes(*statuses: int | None) -> Callable[[str, object], int | None]:
    answers = iter(statuses)
    return lambda uri, auth: next(answers)


def test_invoker_403_is_waited_out_with_log_lines(info_logs: pytest.LogCaptureFixture) -> None:
    fake = FakeClock()
    waited = wait_for_invoker.fn(
        "http://svc",
        object(),
        MEMBER,
        "projects/p/locations/r/services/s",
        120,
        probe=probes(403, 403, 403, 200),
        clock=fake.clock,
    )
    assert waited == 14.0 and fake.sleeps == [2.0, 4.0, 8.0]
    assert [r.getMessage() for r in info_logs.records] == [
        "waiting for the invoker binding to propagate… (0 s of max 120 s)",
        "waiting for the invoker binding to propagate… (2 s of max 120 s)",
        "waiting for the invoker binding to propagate… (6 s of max 120 s)",
    ]


@pytest.mark.parametrize("status", [200, 404, 429, 503, 401, None])
def test_anything_but_403_ends_the_wait(status: int | None) -> None:
    fake = FakeClock()
    waited = wait_for_invoker.fn(
        "http://svc", object(), MEMBER, "s", probe=probes(status), clock=fake.clock
    )
    assert waited == 0
    assert fake.sleeps == []


def test_invoker_past_the_deadline_names_member_and_role() -> None:
    fake = FakeClock()
    with pytest.raises(AccessDeniedError) as info:
        wait_for_invoker.fn(
            "http://svc",
            object(),
            MEMBER,
            "projects/p/locations/r/services/s",
            120,
            probe=lambda uri, auth: 403,
            clock=fake.clock,
        )
    message = str(info.value)
    assert "http://svc still answers 403 to user:ada@example.com after 120 s" in message
    assert "needs roles/run.invoker on the Cloud Run service projects/p/locations/r/services/s" in (
        message
    )
    assert "invoker_propagation_timeout_seconds" in message
    assert (
        "gcloud run services add-iam-policy-binding s --region=r --project=p "
        "--member=user:ada@example.com --role=roles/run.invoker"
    ) in message
    assert sum(fake.sleeps) == 120


def test_the_wait_ends_where_the_request_that_got_through_began() -> None:
    """The attempt that passes the ingress may take long (a cold start): not counted as waiting."""
    fake, refusals = FakeClock(), iter(range(2))

    def list_models() -> str:
        if next(refusals, None) is not None:
            raise InvokerRefusedError("403")
        fake.t += 30.0  # the instance starts
        return "tags"

    assert through_invoker_propagation(
        list_models, "http://svc", MEMBER, "s", 120, clock=fake.clock
    ) == ("tags", 6.0)
    assert fake.sleeps == [2.0, 4.0]


def test_a_caller_let_through_at_once_does_not_wait() -> None:
    fake = FakeClock()
    assert through_invoker_propagation(
        lambda: "tags", "http://svc", MEMBER, "s", 120, clock=fake.clock
    ) == ("tags", 0.0)
    assert fake.sleeps == []


def test_a_refused_request_past_the_deadline_names_member_and_role() -> None:
    fake = FakeClock()

    def refused() -> str:
        raise InvokerRefusedError("403")

    with pytest.raises(AccessDeniedError, match=f"{MEMBER} needs roles/run.invoker on the Cloud"):
        through_invoker_propagation(refused, "http://svc", MEMBER, "s", 5, clock=fake.clock)
    assert sum(fake.sleeps) == 5
