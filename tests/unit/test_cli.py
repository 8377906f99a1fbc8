"""The ollama-cloudrun command line: help without Prefect, generated options, env file, exit
codes. The signals and the Prefect server command: tests/flows/test_cli_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import typer

from flows.cli import (
    FLOWS,
    Terminated,
    _stop_reason,
    build_app,
    hoist_global_options,
    load_env_file,
)

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_env_file_is_loaded_before_google_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "emulator.env"
    env_file.write_text("# comment\n\nexport OCR_TEST_A=1\nOCR_TEST_B='two words'\n")
    monkeypatch.delenv("OCR_TEST_A", raising=False)
    monkeypatch.delenv("OCR_TEST_B", raising=False)
    assert load_env_file(env_file) == {"OCR_TEST_A": "1", "OCR_TEST_B": "two words"}
    assert os.environ["OCR_TEST_B"] == "two words"
    bad = tmp_path / "bad.env"
    bad.write_text("NOT A LINE\n")
    with pytest.raises(typer.BadParameter, match="expected KEY=VALUE"):
        load_env_file(bad)


def test_global_options_anywhere_on_the_line() -> None:
    assert hoist_global_options(["deploy", "--env-file", "x.env", "--model", "m", "-v"]) == [
        "--env-file",
        "x.env",
        "-v",
        "deploy",
        "--model",
        "m",
    ]
    assert hoist_global_options(["teardown", "--env-file=y.env"]) == [
        "--env-file=y.env",
        "teardown",
    ]
    assert hoist_global_options(["batch", "--", "--verbose"]) == ["batch", "--", "--verbose"]


def _help_run(*args: str) -> tuple[str, list[str]]:
    """Help text and the top-level packages it imported, from a fresh interpreter."""
    code = (
        "import contextlib, io, json, sys\n"
        "from flows.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        f"    main({list(args)!r})\n"
        "print(json.dumps([out.getvalue(), sorted({m.split('.')[0] for m in sys.modules})]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    text, modules = json.loads(done.stdout)
    return text, modules


def test_help_imports_neither_prefect_nor_the_flows() -> None:
    text, modules = _help_run("--help")
    assert not {"prefect", "google", "pydantic", "tasks", "httpx"} & set(modules)
    for command, spec in FLOWS.items():
        assert command in text
        assert " ".join(spec.summary.split()[:4]) in " ".join(text.split())
    assert "server" in text and "Run a local Prefect server" in text
    for option in ("--env-file PATH", "--version", "--verbose", "--help"):
        assert option in text
    assert "``" not in text and "<bool>" not in text and "Traceback" not in text


def test_command_help_has_its_summary_and_options_without_prefect() -> None:
    text, modules = _help_run("batch", "--help")
    assert not {"prefect", "google"} & set(modules)
    assert " ".join(FLOWS["batch"].summary.split()) in " ".join(text.split())
    assert "--input TEXT" in text and "--api [ollama|openai]" in text
    assert "--stream / --no-stream" in text and "[required]" in text
    assert "<str>" not in text and "``" not in text


def test_version_is_the_package_version() -> None:
    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ollama-cloudrun {version('ollama-cloudrun')}"


def test_a_signal_in_the_exception_chain_sets_the_exit_status() -> None:
    class TerminationSignal(BaseException):  # Prefect's, by name: the CLI does not import it
        pass

    try:
        try:
            raise TerminationSignal
        except TerminationSignal as exc:
            raise RuntimeError("flow crashed") from exc
    except RuntimeError as crashed:
        assert _stop_reason(crashed) == 143
    assert _stop_reason(Terminated()) == 143
    assert _stop_reason(KeyboardInterrupt()) == 130
    assert _stop_reason(ValueError("x")) is None


def test_options_come_from_the_parameter_models() -> None:
    group = typer.main.get_command(build_app("deploy"))
    assert hasattr(group, "commands")
    assert set(FLOWS) | {"server"} == set(group.commands)
    deploy_opts = {o for p in group.commands["deploy"].params for o in p.opts}
    assert {
        "--model",
        "--max-instances",
        "--gpu-zonal-redundancy",
        "--memory",
        "--invoker",
    } <= deploy_opts
    teardown_group = typer.main.get_command(build_app("teardown"))
    assert hasattr(teardown_group, "commands")
    teardown_cmd = teardown_group.commands["teardown"]
    sweep = next(p for p in teardown_cmd.params if "--sweep" in p.opts)
    assert "--no-sweep" in sweep.secondary_opts
    assert any("--idle-hours" in p.opts for p in teardown_cmd.params)


def test_bad_parameters_exit_2_with_a_clear_message() -> None:
    result = _cli("deploy", "--cpu", "2")
    assert result.returncode == 2
    assert "a GPU service needs at least 4 CPU" in result.stderr
    assert "Value error" not in result.stderr and "Traceback" not in result.stderr
    result = _cli("teardown", "--idle-hours", "soon")
    assert result.returncode == 2 and "--idle-hours" in result.stderr
    result = _cli("batch", "--input", "in.jsonl", "--output", "out/", "--target", "Not A Name")
    assert result.returncode == 2
    assert "--target: 'Not A Name': must be an http(s):// URL or a Cloud Run service name" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_missing_env_file_is_a_usage_error() -> None:
    result = _cli("--env-file", "/nonexistent/emulator.env", "teardown")
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_batch_takes_workers_and_refuses_fewer_than_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from flows import cli

    calls: list[dict[str, object]] = []

    def run_flow(command: str, spec: object, params: object, verbose: bool, **options: object):
        calls.append(options)
        return {"command": command}

    monkeypatch.setattr(cli, "_run_flow", run_flow)
    app = build_app("batch")
    command = typer.main.get_command(app).commands["batch"]  # type: ignore[attr-defined]
    workers = next(p for p in command.params if "--workers" in p.opts)
    assert "batch-shard" in (workers.help or "") and "[default: 1]" in (workers.help or "")
    base = ["batch", "--input", "in.jsonl", "--output", "out/"]
    assert CliRunner().invoke(app, [*base, "--workers", "2"]).exit_code == 0
    assert CliRunner().invoke(app, base).exit_code == 0
    assert calls == [{"workers": 2}, {}]  # not given: the flow's default
    for bad, message in (
        ("0", "--workers: Input should be greater than or equal to 1"),
        ("-3", "--workers: Input should be greater than or equal to 1"),
        ("two", "Invalid value for '--workers'"),
    ):
        result = CliRunner().invoke(app, [*base, "--workers", bad])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    both = CliRunner().invoke(app, ["batch", "--output", "out/", "--workers", "0"])
    assert both.exit_code == 2  # every problem in one message
    assert "--input: Field required" in both.stderr and "--workers:" in both.stderr
    assert len(calls) == 2
