"""What serves a ready Cloud Run revision: an `emulator.ollama` process for the model baked into
its image (the configured engine; the llama engine serves it with the stand-in model and must have
loaded it before the revision is ready). `Launcher` is the seam tests replace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from google.cloud import run_v2

from emulator.gcp.cloud_run.spec import max_instances
from emulator.gcp.config import EmulatorConfig

SIM_PREFIX = "OLLAMA_SIM_"


class RunningBackend(Protocol):
    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


class Launcher(Protocol):
    def __call__(
        self, *, engine: str, models: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> RunningBackend: ...


@dataclass
class OllamaProcess:
    """An `emulator.ollama` child process serving one revision."""

    server: Any

    @property
    def url(self) -> str:
        return str(self.server.base_url)

    def stop(self) -> None:
        from emulator.ollama import stop_ollama_server

        stop_ollama_server(self.server)


def launch_ollama(
    *, engine: str, models: Sequence[str], env: Mapping[str, str], log_path: Path | None
) -> RunningBackend:
    """Start the server and, for the llama engine, load the model before reporting ready."""
    from emulator.ollama import start_ollama_server

    server = start_ollama_server(
        engine="llama" if engine == "llama" else "sim",
        models=models,
        env=env,
        log_path=log_path,
        ready_timeout=300.0,
    )
    backend = OllamaProcess(server)
    if engine == "llama":
        try:
            for spec in models:
                name = spec.split("=", 1)[0]
                r = httpx.post(f"{backend.url}/api/generate", json={"model": name}, timeout=300)
                r.raise_for_status()
        except BaseException:
            backend.stop()
            raise
    return backend


@dataclass(frozen=True)
class LaunchPlan:
    """How to start a revision's server: engine, `name[=stand-in]` models, environment, log."""

    engine: str
    models: list[str]
    env: dict[str, str]
    log_path: Path | None


def image_env(metadata: Mapping[str, str]) -> dict[str, str]:
    """The ENV of an image (its Dockerfile's, recorded by the emulated Cloud Build) that the
    stand-in server takes: its own knobs, `OLLAMA_SIM_*`. The rest describe the real Ollama
    image (listen address, model store), which the emulator decides."""
    try:
        env = json.loads(metadata.get("env") or "{}")
    except ValueError:
        return {}
    return {k: str(v) for k, v in env.items() if k.startswith(SIM_PREFIX)}


def launch_plan(
    config: EmulatorConfig,
    service: run_v2.Service,
    image: Mapping[str, str],
    log_name: str,
) -> LaunchPlan:
    """The server for a revision of `service` whose image (its metadata: `model` baked in,
    `env`) is `image`: as a container starts, the image's ENV under the container's env (but
    OLLAMA_HOST and PORT, which the emulator decides), and as many parallel slots as Cloud Run
    would run instances."""
    model = image.get("model", "")
    models = []
    if model:
        models = [f"{model}={config.stand_in_model}" if config.ollama_engine == "llama" else model]
    env = {**config.sim_env, **image_env(image)}
    for var in service.template.containers[0].env:
        if var.name not in ("OLLAMA_HOST", "PORT"):
            env[var.name] = var.value
    parallel = int(env.get("OLLAMA_NUM_PARALLEL", "1") or 1)
    env["OLLAMA_NUM_PARALLEL"] = str(max(1, parallel) * max_instances(service))
    log_path = None
    if config.state_dir is not None:
        log_path = Path(config.state_dir) / "run" / f"{log_name}.log"
    return LaunchPlan(config.ollama_engine, models, env, log_path)
