"""The canary's pure parts (tasks/rollout.py) and the traffic_steps rule (flows/parameters.py)."""

from __future__ import annotations

import pytest
from google.cloud import run_v2
from pydantic import ValidationError

from flows.parameters import DeployParameters
from tasks import rollout
from tasks.rollout import LATEST, REVISION, Share


def _service(*statuses: tuple[run_v2.TrafficTargetAllocationType, str, int, str]) -> run_v2.Service:
    return run_v2.Service(
        latest_created_revision="s-2",
        latest_ready_revision="s-2",
        traffic_statuses=[
            run_v2.TrafficTargetStatus(type_=t, revision=r, percent=p, tag=tag)
            for t, r, p, tag in statuses
        ],
    )


def test_who_serves_and_whether_the_latest_does() -> None:
    latest = _service((LATEST, "", 100, ""))  # a LATEST status without a name: the latest ready
    assert rollout.serving(latest) == (Share("s-2", 100),)
    assert rollout.serves_latest(latest)
    pinned = _service((REVISION, "s-1", 100, ""), (REVISION, "s-2", 0, "candidate"))
    assert rollout.serving(pinned) == (Share("s-1", 100),)
    assert not rollout.serves_latest(pinned)


def test_steps_split_the_rest_in_proportion_and_end_on_latest() -> None:
    before = (Share("s-1", 70), Share("s-0", 30))
    ten = rollout.step_traffic(before, "s-2", 10)
    assert [(t.revision, t.percent, t.tag) for t in ten] == [
        ("s-1", 63, ""),
        ("s-0", 27, ""),
        ("s-2", 10, "candidate"),
    ]
    odd = rollout.step_traffic((Share("a", 50), Share("b", 50)), "c", 33)
    assert sum(t.percent for t in odd) == 100
    done = rollout.step_traffic(before, "s-2", 100)
    assert [(t.type_, t.percent, t.tag) for t in done] == [(LATEST, 100, "")]
    tagged = rollout.candidate_traffic(before, "s-2")
    assert [(t.revision, t.percent, t.tag) for t in tagged][-1] == ("s-2", 0, "candidate")
    assert sum(t.percent for t in tagged) == 100


@pytest.mark.parametrize("steps", [[], [50], [10, 10, 100], [50, 10, 100], [0, 100], [100, 101]])
def test_traffic_steps_must_rise_to_100(steps: list[int]) -> None:
    with pytest.raises(ValidationError, match="traffic_steps"):
        DeployParameters(traffic_steps=steps)


def test_default_steps_move_everything_at_once() -> None:
    assert DeployParameters().traffic_steps == [100]
    assert DeployParameters(traffic_steps=[10, 50, 100]).traffic_steps == [10, 50, 100]
