"""The ollama-cloudrun command line: generated options, env file, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from flows.cli import _pop_env_file, build_app, load_env_file

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


def test_env_file_option_anywhere_on_the_line() -> None:
    assert _pop_env_file(["deploy", "--env-file", "x.env", "--model", "m"]) == (
        ["deploy", "--model", "m"],
        Path("x.env"),
    )
    assert _pop_env_file(["--env-file=y.env", "teardown"]) == (["teardown"], Path("y.env"))


def test_options_come_from_the_parameter_models() -> None:

    app = build_app()
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    assert {"deploy", "smoke-test", "teardown"} <= set(group.commands)
    deploy_opts = {o for p in group.commands["deploy"].params for o in p.opts}
    assert {
        "--model",
        "--max-instances",
        "--gpu-zonal-redundancy",
        "--memory",
        "--invoker",
    } <= deploy_opts
    teardown_cmd = group.commands["teardown"]
    sweep = next(p for p in teardown_cmd.params if "--sweep" in p.opts)
    assert "--no-sweep" in sweep.secondary_opts
    assert any("--ttl-hours" in p.opts for p in teardown_cmd.params)


def test_bad_parameters_exit_2_with_a_clear_message() -> None:
    result = _cli("deploy", "--cpu", "2")
    assert result.returncode == 2
    assert "a GPU service needs at least 4 CPU" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("teardown", "--ttl-hours", "soon")
    assert result.returncode == 2


def test_missing_env_file_is_a_usage_error() -> None:
    result = _cli("--env-file", "/nonexistent/emulator.env", "teardown")
    assert result.returncode == 2
    assert "does not exist" in result.stderr
