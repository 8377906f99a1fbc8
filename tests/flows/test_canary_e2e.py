"""Canary rollout end to end (issue 13, item 2) against emulator.gcp with the official clients.

A redeploy's new revision gets no traffic and the tag `candidate`; the smoke test runs on the
tag's URL; only then does the traffic move. A bad image (its Dockerfile makes every generation
fail) fails on its tag: 100 % of the traffic stays on the old revision, the service has exactly
one revision more, and a client generating on the service URL all along sees no error.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from prefect.artifacts import Artifact

from flows.deploy import DeployParameters, deploy
from flows.teardown import TeardownParameters, teardown
from tasks import clients, cloud_build, rollout
from tasks.clients import caller_identity
from tasks.id_tokens import GoogleIdTokenAuth
from tests.flows.conftest import EmulatorControl

pytestmark = pytest.mark.slow


def _service(name: str) -> run_v2.Service:
    return clients.run_services_client(clients.resolve_cloud()).get_service(name=name)


def _requests_by_revision(service_id: str) -> Counter[tuple[str, str]]:
    """(revision, response code) → requests, from Cloud Monitoring's request_count."""
    cloud = clients.resolve_cloud()
    now = dt.datetime.now(dt.UTC)
    body = (
        clients.monitoring_resource(cloud)
        .projects()
        .timeSeries()
        .list(
            name=f"projects/{cloud.project}",
            filter=f'metric.type="run.googleapis.com/request_count" AND '
            f'resource.labels.service_name="{service_id}"',
            interval_startTime=(now - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            interval_endTime=(now + dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
        )
        .execute()
    )
    counts: Counter[tuple[str, str]] = Counter()
    for series in body.get("timeSeries", []):
        key = (
            series["resource"]["labels"]["revision_name"],
            series["metric"]["labels"]["response_code"],
        )
        counts[key] += sum(int(p["value"]["int64Value"]) for p in series["points"])
    return counts


def _revisions(name: str) -> list[str]:
    listed = clients.run_revisions_client(clients.resolve_cloud()).list_revisions(parent=name)
    return [r.name.rsplit("/", 1)[-1] for r in listed]


class Poller:
    """A client generating on the service URL, one request after another, until stopped."""

    def __init__(self, uri: str) -> None:
        auth = GoogleIdTokenAuth(uri, caller_identity(clients.resolve_cloud()).id_tokens)
        self._http = httpx.Client(base_url=uri, auth=auth, timeout=60)
        self._stop = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": "gemma2:9b", "prompt": "Say yes.", "stream": False}
        body["options"] = {"num_predict": 4}
        while not self._stop.is_set():
            try:
                status = self._http.post("/api/generate", json=body).status_code
                self.outcomes[str(status)] += 1
            except httpx.HTTPError as exc:
                self.outcomes[type(exc).__name__] += 1
            self._stop.wait(0.05)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        self._http.close()


def _bad_image_context(tmp_path: Path) -> Path:
    """ollama-backend/ with one more ENV line: the emulated image's server fails every
    generation with a 500 (the sim's runner crash), yet starts and lists its model."""
    context = tmp_path / "bad-backend"
    shutil.copytree(cloud_build.BUILD_CONTEXT, context)
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\nENV OLLAMA_SIM_FAULT_500 1\n")
    return context


def test_a_bad_image_fails_on_its_tag_and_the_old_revision_keeps_all_traffic(
    emulator_api: EmulatorControl, service_id: str, tmp_path: Path
) -> None:
    first = deploy(DeployParameters(service=service_id))
    name, old = first["service"], first["revision"]
    assert first["rollout"]["serving"] == f"{old} (100 %)"
    before = _revisions(name)
    assert before == [old]

    with Poller(first["uri"]) as poller:
        state = deploy(
            DeployParameters(service=service_id, source_dir=str(_bad_image_context(tmp_path))),
            return_state=True,
        )
    assert state.is_failed()
    assert "smoke" in str(state.message).lower() or "generate" in str(state.message)

    after = _service(name)
    assert rollout.serving(after) == (rollout.Share(old, 100),)
    assert not [s for s in after.traffic_statuses if s.tag]  # the tag was removed
    revisions = _revisions(name)
    assert len(revisions) == len(before) + 1 and old in revisions
    candidate = next(r for r in revisions if r != old)
    assert after.latest_created_revision == candidate  # made, tested, never served
    assert sum(poller.outcomes.values()) >= 5, poller.outcomes
    assert set(poller.outcomes) == {"200"}, poller.outcomes

    artifact = Artifact.get(f"deploy-{service_id}")
    assert artifact is not None
    text = str(artifact.data)
    assert f"{old} (100 %)" in text and f"the candidate {candidate} failed" in text
    assert "/api/generate" in text  # its smoke test failed, on the tag URL
    counts = _requests_by_revision(service_id)
    assert counts[(candidate, "500")] >= 1  # the candidate answered the smoke test only
    assert {r for r, _ in counts} == {old, candidate}
    assert counts[(old, "200")] >= sum(poller.outcomes.values())

    # The next redeploy of a good spec rolls out in steps, with no error for the client either.
    with Poller(first["uri"]) as poller:
        stepped = deploy(
            DeployParameters(service=service_id, max_instances=5, traffic_steps=[10, 50, 100])
        )
    new = stepped["revision"]
    assert new not in (old, candidate)
    assert stepped["rollout"]["serving"] == f"{new} (100 %)"
    assert "10 % → 50 % → 100 %" in stepped["rollout"]["why"]
    assert stepped["smoke test"]["sample answer"]
    served = _service(name)
    assert rollout.serves_latest(served) and served.latest_ready_revision == new
    assert [s.type_ for s in served.traffic_statuses] == [rollout.LATEST]
    assert len(_revisions(name)) == len(revisions) + 1
    assert set(poller.outcomes) == {"200"}, poller.outcomes

    # Unchanged: no revision, no traffic move.
    again = deploy(DeployParameters(service=service_id, max_instances=5))
    assert again["actions"]["service"] == "unchanged" and again["revision"] == new
    assert len(_revisions(name)) == len(revisions) + 1
    teardown(TeardownParameters(service=service_id))


def test_a_first_deploy_that_fails_its_smoke_test_deletes_the_service(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    emulator_api.configure(sim_env={"OLLAMA_SIM_FAULT_500": "1"})
    try:
        state = deploy(DeployParameters(service=service_id), return_state=True)
    finally:
        emulator_api.configure(sim_env={})
    assert state.is_failed()
    cloud = clients.resolve_cloud()
    with pytest.raises(gexc.NotFound):
        _service(
            clients.run_services_client(cloud).service_path(
                cloud.project, "us-central1", service_id
            )
        )
    artifact = Artifact.get(f"deploy-{service_id}")
    assert artifact is not None and "the new service was deleted" in str(artifact.data)
    teardown(TeardownParameters(service=service_id))
