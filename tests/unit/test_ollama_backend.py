"""The image Cloud Build builds: checked with a real Dockerfile parser, not with regexes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

BACKEND = Path(__file__).resolve().parents[2] / "ollama-backend"


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(BACKEND / "Dockerfile"))
    assert parser.structure, "the Dockerfile parsed to nothing"
    return parser


def instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [item["value"] for item in parser.structure if item["instruction"] == name]


def test_base_image_is_a_pinned_ollama_release(dockerfile: DockerfileParser) -> None:
    assert re.fullmatch(r"ollama/ollama:\d+\.\d+\.\d+", dockerfile.baseimage or "")


def test_environment_follows_the_tutorial(dockerfile: DockerfileParser) -> None:
    env = dockerfile.envs
    assert env["OLLAMA_HOST"] == "0.0.0.0:8080"
    assert env["OLLAMA_MODELS"] == "/models"
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"
    assert env["MODEL"] == "gemma2:9b"


def test_model_is_a_build_argument_defaulting_to_gemma2_9b(dockerfile: DockerfileParser) -> None:
    assert dockerfile.args["MODEL"] == "gemma2:9b"
    other = DockerfileParser(path=str(BACKEND / "Dockerfile"), build_args={"MODEL": "gemma2:2b"})
    assert other.envs["MODEL"] == "gemma2:2b"


def test_weights_are_pulled_at_build_time_after_the_model_is_known(
    dockerfile: DockerfileParser,
) -> None:
    order = [item["instruction"] for item in dockerfile.structure]
    pulls = [i for i, item in enumerate(dockerfile.structure) if "ollama pull" in item["value"]]
    assert len(pulls) == 1
    assert order.index("ARG") < pulls[0]
    assert '"${MODEL}"' in dockerfile.structure[pulls[0]]["value"]
    assert "ollama serve" in dockerfile.structure[pulls[0]]["value"]


def test_entrypoint_is_the_exec_form_of_the_copied_script(dockerfile: DockerfileParser) -> None:
    (entrypoint,) = instructions(dockerfile, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["/usr/local/bin/ollama-entrypoint.sh"]
    assert "entrypoint.sh /usr/local/bin/ollama-entrypoint.sh" in instructions(dockerfile, "COPY")


def test_entrypoint_opens_the_public_port_only_after_loading_the_model(tmp_path: Path) -> None:
    """Runs the real script with `ollama`, `curl` and `socat` replaced by recorders."""
    calls = tmp_path / "calls.log"
    for tool, body in {
        "ollama": 'echo "ollama $* OLLAMA_HOST=$OLLAMA_HOST" >>"$CALLS"; exec sleep 30',
        # Like a real server: the health check fails until `ollama serve` is up.
        "curl": 'grep -q "^ollama serve" "$CALLS" 2>/dev/null || exit 7; echo "curl $*" >>"$CALLS"',
        "socat": 'echo "socat $*" >>"$CALLS"',
    }.items():
        executable = tmp_path / tool
        executable.write_text(f"#!/usr/bin/env bash\n{body}\n")
        executable.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "CALLS": str(calls),
        "OLLAMA_HOST": "0.0.0.0:8080",
        "MODEL": "gemma2:9b",
    }
    subprocess.run(
        ["bash", str(BACKEND / "entrypoint.sh")],
        env=env,
        check=True,
        timeout=20,
        capture_output=True,
    )
    log = calls.read_text().splitlines()
    serve = next(i for i, line in enumerate(log) if line.startswith("ollama serve"))
    load = next(i for i, line in enumerate(log) if "/api/generate" in line)
    listen = next(i for i, line in enumerate(log) if line.startswith("socat"))
    assert "OLLAMA_HOST=127.0.0.1:11434" in log[serve], "ollama must start on a private address"
    assert serve < load < listen
    body = json.loads(log[load].split("-d ", 1)[1])
    assert body == {"model": "gemma2:9b", "keep_alive": -1}
    assert log[listen] == "socat TCP-LISTEN:8080,fork,reuseaddr,backlog=256 TCP:127.0.0.1:11434"


def test_entrypoint_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(BACKEND / "entrypoint.sh")], check=True)


def test_build_context_is_only_what_the_image_needs() -> None:
    for ignore_file in (".dockerignore", ".gcloudignore"):
        lines = [
            line.strip()
            for line in (BACKEND / ignore_file).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines[0] == "*"
        assert set(lines[1:]) == {"!Dockerfile", "!entrypoint.sh"}
