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

from emulator.gcp.app import create_app, create_emulator
from emulator.gcp.auth import SERVICE_ACCOUNT_FILE
from emulator.gcp.config import EmulatorConfig
from emulator.gcp.files import write_json_atomic
from emulator.gcp.storage import StorageServer

ENV_FILE = "emulator.env"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m emulator.gcp", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--state-dir", type=Path, help="persist state here (default: in memory)")
    p.add_argument("--env-file", type=Path, help="default <state-dir>/emulator.env")
    p.add_argument("--project", default="local-project")
    p.add_argument("--ollama-engine", choices=["sim", "llama"], default="sim")
    p.add_argument("--stand-in-model", default="smollm2:135m")
    p.add_argument("--gpu-quota", type=int, default=7)
    p.add_argument("--build-seconds", type=float, default=2.0)
    p.add_argument("--propagation-delay", type=float, default=0.0)
    p.add_argument("--token-lifetime", type=int, default=3600)
    p.add_argument("--operation-polls", type=int, default=0)
    p.add_argument(
        "--sim-env",
        action="append",
        default=[],
        metavar="OLLAMA_SIM_X=V",
        help="environment for the sim engine's servers (repeatable)",
    )
    return p.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sim_env = dict(item.split("=", 1) for item in args.sim_env)
    persistent = args.state_dir is not None
    files_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="emulator-gcp-"))
    files_dir = files_dir.resolve()
    files_dir.mkdir(parents=True, exist_ok=True)
    env_file = (args.env_file or files_dir / ENV_FILE).resolve()
    env_file.unlink(missing_ok=True)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    base_url = f"http://{args.host}:{port}"

    storage = StorageServer(files_dir / "gcs" if persistent else None, host=args.host)
    try:
        storage.start()
        config = EmulatorConfig(
            project=args.project,
            host=args.host,
            port=port,
            state_dir=files_dir if persistent else None,
            ollama_engine=args.ollama_engine,
            stand_in_model=args.stand_in_model,
            sim_env=sim_env,
            build_seconds=args.build_seconds,
            propagation_delay_seconds=args.propagation_delay,
            gpu_quota=args.gpu_quota,
            token_lifetime_seconds=args.token_lifetime,
            operation_polls=args.operation_polls,
            storage_url=storage.url,
        )
        emulator = create_emulator(config)
        key_file = files_dir / SERVICE_ACCOUNT_FILE
        info = emulator.signer.service_account_info(args.project, f"{base_url}/token")
        write_json_atomic(key_file, info, mode=0o600)
        env = {
            "OLLAMA_CLOUDRUN_API_ENDPOINT": base_url,
            "STORAGE_EMULATOR_HOST": storage.url,
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
            "GOOGLE_CLOUD_PROJECT": args.project,
            "GCE_METADATA_HOST": f"{args.host}:{port}",
            "GCE_METADATA_IP": f"{args.host}:{port}",
        }

        def started() -> None:
            tmp = env_file.with_name(f".{env_file.name}.tmp")
            tmp.write_text(env_lines(env))
            os.replace(tmp, env_file)
            print(
                f"emulator.gcp listening on {base_url} (storage {storage.url}); "
                f"env file: {env_file}",
                flush=True,
            )

        app = create_app(emulator)
        server = _Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"), started
        )
        try:
            server.run(sockets=[sock])
        finally:
            emulator.close()
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
