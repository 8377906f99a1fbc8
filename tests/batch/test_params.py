"""The batch's parameter model: sub-models, the flat form, the CLI options and the pipeline."""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flows import cli
from flows.pipeline import PipelineParameters
from tasks.batch.params import BatchParams, EngineSettings


def echo(params: BatchParams) -> dict[str, Any]:
    """Stands in for the batch flow: returns the parameters the CLI built."""
    return params.model_dump(mode="json")


def test_the_flat_form_lands_in_the_sub_models() -> None:
    flat = BatchParams.model_validate(
        {"input": "in", "output": "out", "in_flight": 3, "vcpu_usd_per_second": 0.5}
    )
    nested = BatchParams(
        input="in",
        output="out",
        engine=EngineSettings.model_validate({"in_flight": 3}),
        prices={"vcpu_usd_per_second": 0.5},  # type: ignore[arg-type]
    )
    assert flat == nested
    assert flat.engine.in_flight == 3 and flat.engine.max_retries == 5
    with pytest.raises(ValueError, match="extra"):
        BatchParams.model_validate({"input": "in", "output": "out", "in_fligth": 3})


def test_cli_options_are_flat_and_fill_the_sub_models(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = cli.FlowCommand(
        "Echo.", "tests.batch.test_params:echo", "tasks.batch.params:BatchParams"
    )
    monkeypatch.setitem(cli.FLOWS, "echo", spec)
    # The options and their validation are under test here, not running a flow under Prefect.
    monkeypatch.setattr(cli, "_run_flow", lambda command, spec, params, verbose: echo(params))
    app = cli.build_app("echo")
    command = typer.main.get_command(app).commands["echo"]  # type: ignore[attr-defined]
    options = {o for p in command.params for o in p.opts}
    assert {"--input", "--in-flight", "--request-timeout-seconds", "--l4-usd-per-second"} <= options
    assert not {"--engine", "--prices"} & options
    args = ["echo", "--input", "in", "--output", "out", "--in-flight", "7", "--stream"]
    result = CliRunner().invoke(app, [*args, "--vcpu-usd-per-second", "0.25"])
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["engine"]["in_flight"] == 7 and built["engine"]["stream"] is True
    assert built["prices"]["vcpu_usd_per_second"] == 0.25
    bad = CliRunner().invoke(app, ["echo", "--input", "in", "--output", "out", "--in-flight", "0"])
    assert bad.exit_code == 2 and "--in-flight: Input should be greater" in bad.stderr


def test_the_pipeline_reuses_the_batch_settings() -> None:
    params = PipelineParameters.model_validate(
        {"service": "svc-a", "input": "gs://b/p/", "output": "gs://b/r/", "in_flight": 2}
    )
    batch = params.batch_parameters()
    assert (batch.target, batch.model, batch.region) == ("svc-a", params.model, params.region)
    assert batch.engine == params.engine and batch.engine.in_flight == 2
    options = {
        o
        for p in typer.main.get_command(cli.build_app("pipeline")).commands["pipeline"].params  # type: ignore[attr-defined]
        for o in p.opts
    }
    assert {"--input", "--in-flight", "--max-retries", "--service", "--teardown"} <= options
    with pytest.raises(ValueError, match="gs://bucket/path or a local path"):
        PipelineParameters.model_validate({"input": "s3://x", "output": "gs://b/r/"})
