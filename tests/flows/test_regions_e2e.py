"""Several regions end to end against emulator.gcp: one build, a service per region (each smoke
tested, each URL in the artifact), a region whose quota or deploy fails is left out, and teardown
and the sweep leave nothing in any region."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.artifacts import Artifact

from flows.deploy import DeployParameters, deploy
from flows.pipeline import PipelineParameters, pipeline
from flows.plan import plan
from flows.teardown import TeardownParameters, teardown
from tasks import idle, preflight, quotas
from tasks.errors import QuotaExceededError
from tests.flows.conftest import EmulatorControl

pytestmark = pytest.mark.slow  # the shared Prefect test server and the emulator subprocess

TWO = ["us-central1", "europe-west4"]


def _set_quotas(emulator: EmulatorControl, region: str, **values: int) -> None:
    body = {"region": region, "quotas": values}
    httpx.post(f"{emulator.base_url}/_emulator/quotas", json=body, timeout=30).raise_for_status()


def _left(emulator: EmulatorControl) -> dict[str, list[str]]:
    """What exists in the emulator, in any region: services, repositories and builds."""
    backends = emulator.state()["backends"]
    return {
        "services": [
            f"{s['location']}/{s['service_id']}" for s in backends["cloud_run"]["services"]
        ],
        "repositories": [str(r) for r in backends["artifact_registry"]["repositories"]],
    }


def _deployed(result: dict[str, Any]) -> list[str]:
    return [r for r, done in result["regions"].items() if done["status"].startswith("deployed")]


def test_two_regions_one_build_then_teardown_leaves_nothing(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    result = deploy(DeployParameters(service=service_id, regions=TWO))
    assert _deployed(result) == TWO
    assert len(emulator_api.state()["backends"]["cloud_build"]["builds"]) == 1
    uris = {r: result["regions"][r]["uri"] for r in TWO}
    assert len(set(uris.values())) == 2  # each region its own ingress
    for region in TWO:
        done = result["regions"][region]
        assert done["service"].endswith(f"/locations/{region}/services/{service_id}")
        assert done["smoke test"]["sample answer"]  # the smoke test ran in each region
        assert done["actions"]["service"] == "created"
    assert result["uri"] == uris["us-central1"]
    assert result["image"].startswith("us-central1-docker.pkg.dev/")  # the first region's
    artifact = Artifact.get(f"deploy-{service_id}")
    assert artifact is not None and all(uri in str(artifact.data) for uri in uris.values())
    assert sorted(_left(emulator_api)["services"]) == sorted(f"{r}/{service_id}" for r in TWO)

    # Unchanged: no build, each region "unchanged"; the plan agrees for each region.
    again = deploy(DeployParameters(service=service_id, regions=TWO))
    assert {again["regions"][r]["actions"]["service"] for r in TWO} == {"unchanged"}
    planned = plan(DeployParameters(service=service_id, regions=TWO))
    services = [c for c in planned["changes"] if c["resource"] == "service"]
    assert [c["name"].split("/")[3] for c in services] == TWO
    assert {c["action"] for c in services} == {"no change"}

    rows = teardown(TeardownParameters(service=service_id, regions=TWO))
    assert [r["result"] for r in rows if r["kind"] == "service"] == ["deleted", "deleted"]
    assert _left(emulator_api) == {"services": [], "repositories": []}


def test_sweep_leaves_nothing_in_any_region(
    emulator_api: EmulatorControl, service_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy(DeployParameters(service=service_id, regions=TWO, run_smoke_test=False))
    later = time.time() + 25 * 3600
    monkeypatch.setattr(idle, "now", lambda: later)
    rows = teardown(TeardownParameters(sweep=True, idle_hours=24, regions=TWO))
    assert [r["result"] for r in rows if r["kind"] == "service"] == ["deleted", "deleted"]
    assert _left(emulator_api) == {"services": [], "repositories": []}


def test_a_region_without_quota_is_left_out(emulator_api: EmulatorControl, service_id: str) -> None:
    # GPU quota is per region: none left in the first does not block the second.
    _set_quotas(emulator_api, "us-central1", **{quotas.GPU_NO_ZONAL: 0})
    result = deploy(DeployParameters(service=service_id, regions=TWO, run_smoke_test=False))
    assert _deployed(result) == ["europe-west4"]
    left_out = result["regions"]["us-central1"]["status"]
    assert left_out.startswith("left out: Preflight failed")
    assert quotas.GPU_NO_ZONAL in left_out
    assert result["service"].split("/")[3] == "europe-west4"
    assert _left(emulator_api)["services"] == [f"europe-west4/{service_id}"]

    # Every region without quota: the run fails with the preflight's own error.
    _set_quotas(emulator_api, "europe-west4", **{quotas.GPU_NO_ZONAL: 0})
    with pytest.raises(QuotaExceededError, match="Not one instance fits"):
        deploy(DeployParameters(service=f"{service_id}-b", regions=TWO, run_smoke_test=False))
    teardown(TeardownParameters(service=service_id, regions=TWO))
    assert _left(emulator_api) == {"services": [], "repositories": []}


def test_a_region_that_fails_to_deploy_is_rolled_back_and_left_out(
    emulator_api: EmulatorControl, service_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The quota checker cannot answer (the preflight goes on), so europe-west4's too-small quota
    # is met by Cloud Run's own admission: that region fails, its half-made service is gone.
    def cannot_check(cloud: object, spec: object) -> dict[str, int]:
        raise preflight.CannotCheck("Cloud Quotas did not answer")

    monkeypatch.setattr(preflight, "quota_limits", cannot_check)
    _set_quotas(emulator_api, "europe-west4", **{quotas.GPU_NO_ZONAL: 2})
    result = deploy(DeployParameters(service=service_id, regions=TWO, run_smoke_test=False))
    assert _deployed(result) == ["us-central1"]
    failed = result["regions"]["europe-west4"]["status"]
    assert failed.startswith("failed (rolled back)") and "allowed: 2" in failed
    assert _left(emulator_api)["services"] == [f"us-central1/{service_id}"]
    teardown(TeardownParameters(service=service_id, regions=TWO))
    assert _left(emulator_api) == {"services": [], "repositories": []}


def test_pipeline_batches_over_every_region_then_leaves_nothing(
    emulator_api: EmulatorControl, service_id: str, tmp_path: Path
) -> None:
    n = 40
    lines = [json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) for i in range(n)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    params = PipelineParameters.model_validate(
        {
            "service": service_id,
            "regions": TWO,
            "max_instances": 1,
            "input": str(tmp_path / "in.jsonl"),
            "output": str(tmp_path / "out"),
            "run_smoke_test": False,
        }
    )
    result = asyncio.run(pipeline(params))
    assert result["regions"] == {r: "deployed (created)" for r in TWO}
    assert result["batch"]["counts"]["succeeded"] == n
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    served = {t["name"]: t["ok"] for t in manifest["targets"]}
    assert set(served) == {f"{r}/{service_id}" for r in TWO}
    assert sum(served.values()) == n and min(served.values()) > 0  # both regions answered
    assert result["teardown"] == "done"
    assert _left(emulator_api) == {"services": [], "repositories": []}
