"""prefect.yaml and deployments/ validated by Prefect itself, plus a strict check of our own."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prefect.workers.process import ProcessWorker
from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerV2

from tests.prefect.yaml_checks import problems

ROOT = Path(__file__).resolve().parents[2]
LOCAL_YAML = ROOT / "prefect.yaml"
GCP_YAML = ROOT / "deployments" / "prefect.gcp.yaml"
JOB_TEMPLATE = ROOT / "deployments" / "cloud-run-v2-job-template.json"

EXPECTED = {
    # deployment name: (entrypoint, cron or None)
    "redeploy": ("flows/deploy.py:deploy", None),
    "nightly-batch": ("flows/batch.py:batch_inference", "0 2 * * *"),
    "batch-shard": ("flows/batch_shard.py:batch_shard", None),
    "cleanup-sweep": ("flows/teardown.py:teardown", "30 * * * *"),
    "drift-check": ("flows/check.py:check", "0 6 * * *"),
    "pipeline": ("flows/pipeline.py:pipeline", None),
    "teardown-failed-pipeline": ("flows/pipeline.py:teardown_failed_pipeline", None),
}


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def pool_variables() -> dict[str, set[str]]:
    process = ProcessWorker.get_default_base_job_template()["variables"]["properties"]
    cloud_run = json.loads(JOB_TEMPLATE.read_text())["variables"]["properties"]
    return {"local-process": set(process), "cloud-run": set(cloud_run)}


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in document["deployments"]}


@pytest.mark.parametrize("path", [LOCAL_YAML, GCP_YAML], ids=["prefect.yaml", "prefect.gcp.yaml"])
def test_prefect_yaml_passes_prefect_and_the_strict_check(path: Path) -> None:
    assert problems(load(path), ROOT, pool_variables()) == []


@pytest.mark.parametrize("path", [LOCAL_YAML, GCP_YAML], ids=["prefect.yaml", "prefect.gcp.yaml"])
def test_the_deployments_and_the_automation_target(path: Path) -> None:
    deployments = by_name(load(path))
    assert set(deployments) == set(EXPECTED)
    for name, (entrypoint, cron) in EXPECTED.items():
        deployment = deployments[name]
        assert deployment["entrypoint"] == entrypoint, name
        crons = [s["cron"] for s in deployment.get("schedules") or []]
        assert crons == ([cron] if cron else []), name
    assert deployments["nightly-batch"]["parameters"]["params"].keys() >= {"input", "output"}
    sweep = deployments["cleanup-sweep"]["parameters"]["params"]
    assert sweep["sweep"] is True
    [trigger] = deployments["teardown-failed-pipeline"]["triggers"]
    assert set(trigger["expect"]) == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert trigger["match_related"] == {
        "prefect.resource.role": "flow",
        "prefect.resource.name": "pipeline",
    }
    assert not any(
        d.get("triggers") for n, d in deployments.items() if n != "teardown-failed-pipeline"
    )


def test_gcp_yaml_is_the_local_one_on_another_pool() -> None:
    """Same deployments, parameters, schedules and automation; only pool and pull steps differ."""
    local, gcp = by_name(load(LOCAL_YAML)), by_name(load(GCP_YAML))
    assert local.keys() == gcp.keys()
    for name in local:
        mine = {k: v for k, v in local[name].items() if k not in ("work_pool", "pull")}
        theirs = {k: v for k, v in gcp[name].items() if k not in ("work_pool", "pull")}
        assert mine == theirs, name
        assert local[name]["work_pool"]["name"] == "local-process"
        assert gcp[name]["work_pool"]["name"] == "cloud-run"


def _mutations() -> list[tuple[str, Any]]:
    """(description, function that plants one misspelled key) — each must be reported."""

    def top(doc: dict[str, Any]) -> None:
        doc["deploymnets"] = []

    def deployment(doc: dict[str, Any]) -> None:
        doc["deployments"][0]["paramters"] = doc["deployments"][0].pop("parameters", {})

    def work_pool(doc: dict[str, Any]) -> None:
        doc["deployments"][0]["work_pool"]["job_variable"] = {}

    def job_variable(doc: dict[str, Any]) -> None:
        doc["deployments"][0]["work_pool"]["job_variables"] = {"enviroment": {}}

    def schedule(doc: dict[str, Any]) -> None:
        by_name(doc)["nightly-batch"]["schedules"][0]["timezon"] = "UTC"

    def trigger(doc: dict[str, Any]) -> None:
        by_name(doc)["teardown-failed-pipeline"]["triggers"][0]["match_relate"] = {}

    def parameter(doc: dict[str, Any]) -> None:
        by_name(doc)["nightly-batch"]["parameters"]["parms"] = {}

    def nested_field(doc: dict[str, Any]) -> None:
        by_name(doc)["nightly-batch"]["parameters"]["params"]["ouptut"] = "gs://b/o/"

    def wrong_type(doc: dict[str, Any]) -> None:
        by_name(doc)["nightly-batch"]["parameters"]["params"]["shard_size"] = "many"

    def entrypoint(doc: dict[str, Any]) -> None:
        by_name(doc)["pipeline"]["entrypoint"] = "flows/pipeline.py:no_such_flow"

    def missing_file(doc: dict[str, Any]) -> None:
        by_name(doc)["pipeline"]["entrypoint"] = "flows/nope.py:pipeline"

    def step(doc: dict[str, Any]) -> None:
        doc["pull"] = [{"prefect.deployments.steps.set_working_directory": {"dir": "/x"}}]

    return [
        ("top-level key", top),
        ("deployment key", deployment),
        ("work_pool key", work_pool),
        ("job variable", job_variable),
        ("schedule key", schedule),
        ("trigger key", trigger),
        ("flow parameter", parameter),
        ("field of the parameter model", nested_field),
        ("parameter type", wrong_type),
        ("flow name", entrypoint),
        ("entrypoint file", missing_file),
        ("step argument", step),
    ]


@pytest.mark.parametrize(("what", "plant"), _mutations(), ids=[m[0] for m in _mutations()])
def test_the_strict_check_reports_a_misspelled(what: str, plant: Any) -> None:
    document = copy.deepcopy(load(LOCAL_YAML))
    plant(document)
    found = problems(document, ROOT, pool_variables())
    assert found, f"a misspelled {what} went unnoticed"


def test_cloud_run_job_template_fits_the_prefect_gcp_worker() -> None:
    template = json.loads(JOB_TEMPLATE.read_text())
    default = CloudRunWorkerV2.get_default_base_job_template()
    # The worker fills exactly this job configuration; only variable defaults are ours.
    assert template["job_configuration"] == default["job_configuration"]
    assert set(template["variables"]["properties"]) == set(default["variables"]["properties"])
    placeholders = set(
        re.findall(r"{{\s*([a-z_]+)\s*}}", json.dumps(template["job_configuration"]))
    )
    assert placeholders <= set(template["variables"]["properties"])
    variables = template["variables"]["properties"]
    assert variables["timeout"]["default"] <= variables["timeout"]["maximum"]
    assert re.fullmatch(variables["memory"]["pattern"], variables["memory"]["default"])
    assert variables["max_retries"]["default"] == 0
    # Every default is a valid value of its own variable schema (what the UI form enforces).
    for schema in variables.values():
        if "default" in schema and "$ref" not in json.dumps(schema):
            jsonschema.validate(schema["default"], schema)
