"""Several targets: how they are named, the circuit breaker (fake clock), and the engine's lanes
with scripted backends (back-off per target, failover, Retry-After). Against sim servers:
tests/batch/test_targets_sim.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import ollama
import pytest
import typer
from aiohttp import web
from typer.testing import CliRunner

from flows import cli
from tasks.batch.backends import OllamaBackend, RejectedError, parse_retry_after
from tasks.batch.breaker import CircuitBreaker
from tasks.batch.engine import RequestEngine
from tasks.batch.lanes import Lane
from tasks.batch.limiter import AdaptiveLimiter
from tasks.batch.params import BatchParams
from tasks.batch.records import Completion, PromptRequest
from tasks.batch.target import Target, lane_limits
from tasks.batch.target_refs import parse_target, parse_targets
from tests.batch.test_params import echo

# -- naming targets ------------------------------------------------------------------------


def test_a_target_is_a_service_a_regional_service_or_a_url_with_optional_slots() -> None:
    assert parse_target("ollama-gemma").service == "ollama-gemma"
    regional = parse_target("europe-west4/ollama-gemma#slots=12")
    assert (regional.region, regional.service, regional.slots) == (
        "europe-west4",
        "ollama-gemma",
        12,
    )
    url = parse_target("http://127.0.0.1:11434/#slots=3")
    assert (url.url, url.slots, url.service) == ("http://127.0.0.1:11434", 3, None)
    assert parse_target("https://x-abc.a.run.app").on_run_app
    for bad, why in [
        ("Not A Name", "must be an http"),
        ("svc#slots=0", "slots must be between"),
        ("svc#weight=2", "only suffix"),
        ("moon/svc", "not a region"),
        ("http://", "no host"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_target(bad)


def test_target_takes_a_string_a_comma_list_or_a_list() -> None:
    one = BatchParams(input="in", output="out", target="svc-a")
    assert one.target == "svc-a" and [r.label for r in one.targets] == ["us-central1/svc-a"]
    commas = BatchParams(input="in", output="out", target="svc-a, europe-west4/svc-a")
    listed = BatchParams(input="in", output="out", target=["svc-a", "europe-west4/svc-a"])
    assert commas.target == listed.target == ["svc-a", "europe-west4/svc-a"]
    assert [r.region for r in listed.targets] == ["us-central1", "europe-west4"]
    mixed = BatchParams(input="in", output="out", target=["http://127.0.0.1:1", "svc-b"])
    assert mixed.needs_cloud and mixed.sends_id_tokens(mixed.targets[1])
    assert not mixed.sends_id_tokens(mixed.targets[0])
    urls = BatchParams(input="in", output="out", target="http://127.0.0.1:1,http://127.0.0.1:2")
    assert not urls.needs_cloud
    with pytest.raises(ValueError, match="named twice"):
        BatchParams(input="in", output="out", target=["svc-a", "us-central1/svc-a"])
    with pytest.raises(ValueError, match="at least one target"):
        BatchParams(input="in", output="out", target=[])
    assert parse_targets("svc", "asia-east1")[0].label == "asia-east1/svc"


def test_cli_target_is_repeatable_and_takes_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = cli.FlowCommand(
        "Echo.", "tests.batch.test_params:echo", "tasks.batch.params:BatchParams"
    )
    monkeypatch.setitem(cli.FLOWS, "echo", spec)
    monkeypatch.setattr(cli, "_run_flow", lambda command, spec, params, verbose: echo(params))
    app = cli.build_app("echo")
    base = ["echo", "--input", "in", "--output", "out"]
    one = CliRunner().invoke(app, [*base, "--target", "svc-a"])
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["target"] == "svc-a"
    repeated = ["--target", "svc-a", "--target", "europe-west4/svc-a,http://127.0.0.1:9#slots=2"]
    many = CliRunner().invoke(app, [*base, *repeated])
    assert many.exit_code == 0, many.output
    assert json.loads(many.stdout)["target"] == [
        "svc-a",
        "europe-west4/svc-a",
        "http://127.0.0.1:9#slots=2",
    ]
    command = typer.main.get_command(app).commands["echo"]  # type: ignore[attr-defined]
    assert "Repeat for several" in next(p for p in command.params if "--target" in p.opts).help


def test_in_flight_is_shared_in_proportion_to_slots() -> None:
    a = Target("http://a", "a", max_instances=2, concurrency=4)  # 8 slots
    b = Target("http://b", "b", max_instances=1, concurrency=4, explicit_slots=2)
    assert lane_limits([a, b], None) == [8, 2]
    assert lane_limits([a, b], 20) == [16, 4]
    assert lane_limits([a, b], 1) == [1, 1]  # at least one each
    assert lane_limits([a], 3) == [3]


# -- the circuit breaker -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_probes_once_and_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, cooldown_seconds=5, max_cooldown_seconds=12, clock=clock)
    for _ in range(2):
        breaker.failure()
    breaker.success()  # an answer resets the count
    for _ in range(2):
        breaker.failure()
    assert breaker.state == "closed" and breaker.admits()
    breaker.failure()
    assert breaker.state == "open" and not breaker.admits() and breaker.opens == 1
    clock.now += 4.9
    assert breaker.state == "open"
    clock.now += 0.1
    assert breaker.state == "half-open" and breaker.admits()
    breaker.sent()  # the probe
    assert not breaker.admits()  # one probe at a time
    breaker.failure()  # the probe failed: open again, twice as long
    assert breaker.state == "open" and breaker.cooldown == 10
    clock.now += 10
    breaker.sent()
    breaker.failure()
    assert breaker.cooldown == 12  # capped
    clock.now += 12
    assert breaker.admits()
    breaker.sent()
    breaker.success()
    assert breaker.state == "closed" and breaker.cooldown == 5 and breaker.opens == 1


def test_an_answer_that_left_before_the_breaker_opened_does_not_close_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, cooldown_seconds=5, clock=clock)
    breaker.failure()
    breaker.success()  # sent before it opened
    assert breaker.state == "open"
    clock.now += 5
    breaker.sent()
    breaker.abandon()  # a cancelled probe: another may go
    assert breaker.admits()


# -- the engine's lanes, scripted ----------------------------------------------------------


class ScriptedTarget:
    """Answers after ``delay``; raises what ``fail`` returns for a call number (None: answer)."""

    def __init__(self, delay: float = 0.001, fail: Any = None) -> None:
        self.delay, self.fail = delay, fail or (lambda n: None)
        self.calls: list[tuple[str, float]] = []
        self.failed_at: list[float] = []
        self.in_flight = self.peak = 0

    async def complete(self, request: PromptRequest) -> Completion:
        self.calls.append((request.id, time.monotonic()))
        number = len(self.calls)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if (error := self.fail(number)) is not None:
                self.failed_at.append(time.monotonic())
                raise error
        finally:
            self.in_flight -= 1
        return Completion(text="ok", model="m", done_reason="stop", eval_count=1)

    async def aclose(self) -> None:
        return None


def _lane(name: str, backend: ScriptedTarget, slots: int, failures: int = 3) -> Lane:
    limiter = AdaptiveLimiter(slots, concurrency=slots, max_instances=1)
    return Lane(name, backend, limiter, CircuitBreaker(failures=failures, cooldown_seconds=60))


def _run(lanes: list[Lane], n: int, retries: int = 3) -> tuple[RequestEngine, list[Any]]:
    engine = RequestEngine(
        lanes,
        max_retries=retries,
        backoff_initial_seconds=0.001,
        backoff_max_seconds=0.01,
        attempt_timeout_seconds=5,
    )
    requests = [PromptRequest(f"p{i}", "f", i, 1, prompt="q") for i in range(n)]

    async def go() -> list[Any]:
        return await asyncio.gather(*(engine.run(r) for r in requests))

    return engine, asyncio.run(asyncio.wait_for(go(), 60))


def test_a_target_that_dies_gets_nothing_more_and_its_prompts_go_elsewhere() -> None:
    dead = ScriptedTarget(fail=lambda n: ConnectionError("refused") if n > 5 else None)
    alive = ScriptedTarget()
    engine, outcomes = _run([_lane("dead", dead, 4), _lane("alive", alive, 4)], 200)
    assert all(o.ok for o in outcomes)  # no prompt lost
    failed_on_dead = len(dead.calls) - 5
    # The breaker opened after 3 failures in a row; what was in flight then failed too (an
    # answer that left before the death, arriving between failures, may delay it a little).
    assert 3 <= failed_on_dead <= 12
    d, a = engine.lanes[0], engine.lanes[1]
    assert d.breaker.state == "open" and d.breaker.opens == 1
    assert d.stats.failed == d.stats.retried == failed_on_dead
    assert d.stats.ok + a.stats.ok == 200 and a.stats.failed == 0
    assert Counter(o.record["id"] for o in outcomes) == Counter(f"p{i}" for i in range(200))


def test_a_slow_client_still_splits_by_slots() -> None:
    # One prompt in flight at a time (the client is the bottleneck): every lane always has room,
    # so the slot share must come from the choice itself, not from full lanes being skipped.
    big, small = ScriptedTarget(), ScriptedTarget()
    engine, _ = _run([_lane("big", big, 4), _lane("small", small, 2)], 0)

    async def one_at_a_time() -> None:
        for i in range(300):
            assert (await engine.run(PromptRequest(f"p{i}", "f", i, 1, prompt="q"))).ok

    asyncio.run(one_at_a_time())
    assert (len(big.calls), len(small.calls)) == (200, 100)


def test_a_target_that_recovers_is_probed_and_gets_its_share_again() -> None:
    flaky = ScriptedTarget(
        delay=0.003, fail=lambda n: ConnectionError("reset") if 6 <= n <= 14 else None
    )
    steady = ScriptedTarget(delay=0.003)
    lanes = [_lane("flaky", flaky, 4), _lane("steady", steady, 4)]
    lanes[0].breaker = CircuitBreaker(failures=3, cooldown_seconds=0.01)
    engine, outcomes = _run(lanes, 1000)
    assert all(o.ok for o in outcomes)
    f = engine.lanes[0]
    assert f.breaker.opens >= 1 and f.breaker.state == "closed"  # a probe answered: closed
    assert f.stats.ok > 5 + 20  # and it took prompts again after the probe
    assert f.stats.failed == f.stats.retried


def test_429_backs_off_one_target_only_and_its_retry_after_is_honoured() -> None:
    pause = 0.3
    first = lambda n: RejectedError("busy", 429, pause) if n == 1 else None  # noqa: E731
    busy, calm = ScriptedTarget(delay=0.02, fail=first), ScriptedTarget(delay=0.02)
    engine, outcomes = _run([_lane("busy", busy, 4), _lane("calm", calm, 4)], 100)
    assert all(o.ok for o in outcomes)
    b, c = engine.lanes
    assert b.limiter.decreases == 1  # halved once (and grown back by its answers since)
    assert c.limiter.decreases == 0 and c.limiter.limit == 4
    assert b.breaker.state == "closed"  # a 429 is an answer: the target is alive
    (rejected_at,) = busy.failed_at
    later = [t for _, t in busy.calls if t > rejected_at]  # those in flight then started before
    assert later and min(later) >= rejected_at + pause  # nothing sent to it while paused
    assert c.stats.ok > b.stats.ok  # it took the paused target's share meanwhile


def test_when_every_target_fails_the_retry_policy_decides_as_with_one() -> None:
    down = ScriptedTarget(fail=lambda n: ConnectionError("refused"))
    _, outcomes = _run([_lane("a", down, 2, failures=1)], 5, retries=2)
    assert not any(o.ok for o in outcomes) and len(down.calls) == 15  # 3 attempts each


def test_lanes_never_exceed_their_slots() -> None:
    a, b = ScriptedTarget(delay=0.003), ScriptedTarget(delay=0.003)
    engine, outcomes = _run([_lane("a", a, 3), _lane("b", b, 1)], 120)
    assert all(o.ok for o in outcomes) and a.peak == 3 and b.peak == 1
    assert engine.lanes[0].stats.ok > engine.lanes[1].stats.ok


# -- Retry-After on the wire ---------------------------------------------------------------


def test_retry_after_reaches_the_engine_from_the_http_answer() -> None:
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None

    async def scenario() -> ollama.ResponseError:
        async def busy(request: web.Request) -> web.Response:
            return web.Response(status=429, text="busy", headers={"Retry-After": "3"})

        app = web.Application()
        app.router.add_post("/api/generate", busy)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        backend = OllamaBackend(
            f"http://127.0.0.1:{port}",
            "m",
            connect_timeout_seconds=5,
            read_timeout_seconds=5,
            tokens=None,
            max_connections=1,
        )
        try:
            await backend.complete(PromptRequest("x", "f", 1, 1, prompt="q"))
        except ollama.ResponseError as exc:
            return exc
        finally:
            await backend.aclose()
            await runner.cleanup()
        raise AssertionError("no error")

    error = asyncio.run(scenario())
    assert isinstance(error, RejectedError) and error.status_code == 429
    assert error.retry_after == 3.0
