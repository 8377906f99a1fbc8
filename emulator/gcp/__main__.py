"""`python -m emulator.gcp`: serve the emulated Google Cloud APIs until SIGINT/SIGTERM.

Writes the generated service-account key file and the env file, prints one start-up line, and on
shutdown stops fake-gcs-server and every service backend.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from emulator.gcp.app import create_app, create_emulator
from emulator.gcp.auth import SERVICE_ACCOUNT_FILE
from emulator.gcp.auth.user_credentials import USER_ADC_ENV, USER_ADC_FILE, authorized_user_info
from emulator.gcp.config import EmulatorConfig, add_flags, config_from_flags
from emulator.gcp.files import write_json_atomic
from emulator.gcp.storage import StorageServer

ENV_FILE = "emulator.env"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EmulatorConfig]:
    """The flags (generated from `EmulatorConfig`) and the config they ask for (bad values exit 2
    with pydantic's message, before anything starts)."""
    p = argparse.ArgumentParser(prog="python -m emulator.gcp", description=__doc__)
    add_flags(p)
    p.add_argument("--env-file", type=Path, help="default <state-dir>/emulator.env")
    args = p.parse_args(argv)
    try:
        return args, config_from_flags(args)
    except (ValidationError, ValueError) as exc:
        p.error(str(exc))


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def client_env(config: EmulatorConfig, key_file: Path) -> dict[str, str]:
    """The env file: what a client of this emulator needs (official libraries included)."""
    base_url = f"http://{config.host}:{config.port}"
    return {
        "OLLAMA_CLOUDRUN_API_ENDPOINT": base_url,
        # Through the emulator's Cloud Storage front (matchGlob, locations, bucket IAM).
        "STORAGE_EMULATOR_HOST": base_url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
        "GOOGLE_CLOUD_PROJECT": config.project,
        "GCE_METADATA_HOST": f"{config.host}:{config.port}",
        "GCE_METADATA_IP": f"{config.host}:{config.port}",
    }


def env_lines(env: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in env.items())


class _Server(uvicorn.Server):
    """uvicorn that calls `on_started` once it is listening."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown, which would kill the
        # process before main() stops fake-gcs-server: forget them once uvicorn has handled them.
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


def serve(config: EmulatorConfig, sock: socket.socket, files_dir: Path, env_file: Path) -> None:
    """Serve until SIGINT/SIGTERM; the key file goes to `files_dir`, the env file appears once
    the server listens."""
    emulator = create_emulator(config)
    base_url = f"http://{config.host}:{config.port}"
    key_file = files_dir / SERVICE_ACCOUNT_FILE
    info = emulator.signer.service_account_info(config.project, f"{base_url}/token")
    write_json_atomic(key_file, info, mode=0o600)
    user_adc = files_dir / USER_ADC_FILE  # as `gcloud auth application-default login` writes it
    write_json_atomic(user_adc, authorized_user_info(emulator.signer, config.project), mode=0o600)
    env = {**client_env(config, key_file), USER_ADC_ENV: str(user_adc)}

    def started() -> None:
        tmp = env_file.with_name(f".{env_file.name}.tmp")
        tmp.write_text(env_lines(env))
        os.replace(tmp, env_file)
        print(
            f"emulator.gcp listening on {base_url} (storage {config.storage_url}); "
            f"env file: {env_file}",
            flush=True,
        )

    server = _Server(
        uvicorn.Config(create_app(emulator), log_level="warning", access_log=False, lifespan="on"),
        started,
    )
    try:
        server.run(sockets=[sock])
    finally:
        emulator.close()


def main(argv: list[str] | None = None) -> int:
    args, requested = parse_args(argv)
    persistent = requested.state_dir is not None
    files_dir = requested.state_dir or Path(tempfile.mkdtemp(prefix="emulator-gcp-"))
    files_dir = files_dir.resolve()
    files_dir.mkdir(parents=True, exist_ok=True)
    env_file = (args.env_file or files_dir / ENV_FILE).resolve()
    env_file.unlink(missing_ok=True)
    sock = listen(requested.host, requested.port)
    storage = StorageServer(files_dir / "gcs" if persistent else None, host=requested.host)
    try:
        storage.start()
        config = requested.model_copy(
            update={
                "port": sock.getsockname()[1],
                "storage_url": storage.url,
                "state_dir": files_dir if persistent else None,
            }
        )
        serve(config, sock, files_dir, env_file)
    finally:
        storage.stop()
        sock.close()
        env_file.unlink(missing_ok=True)
        if not persistent:
            with contextlib.suppress(OSError):
                shutil.rmtree(files_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
