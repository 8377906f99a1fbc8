"""Which Prefect server a CLI command talks to, and the one ``ollama-cloudrun server`` runs.

A command uses, in this order:

1. ``PREFECT_API_URL`` when it is set (environment, Prefect profile or prefect.toml): untouched.
2. The server ``ollama-cloudrun server`` runs, found through its state file
   ``~/.ollama-cloudrun/prefect-server.json`` (``$OLLAMA_CLOUDRUN_HOME``) and a health check.
3. Prefect's own temporary server for this one process (10-15 s to start; one line says so).
   Its output goes to a log file unless ``--verbose``: under load its SQLite database reports
   "database is locked" with long tracebacks from the server's background services, which
   Prefect retries; they are not this command's errors.

``ollama-cloudrun server`` runs ``prefect server start`` (API and UI) on 127.0.0.1:4200 with
``PREFECT_HOME=~/.ollama-cloudrun/prefect`` in the foreground, like ``prefect server start``
itself: Ctrl-C stops it. Other tools reach it with the ``PREFECT_API_URL`` it prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.processes import stop_process, wait_ready

HOME_ENV = "OLLAMA_CLOUDRUN_HOME"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
STATE_FILE_NAME = "prefect-server.json"
# Defaults for every Prefect process the CLI runs or starts; a value the user set wins.
QUIET_PREFECT_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def cli_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".ollama-cloudrun")


def state_file() -> Path:
    return cli_home() / STATE_FILE_NAME


@dataclass(frozen=True)
class ServerState:
    """What ``ollama-cloudrun server`` records while its server runs."""

    pid: int
    api_url: str
    ui_url: str
    log: str


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """``GET {api_url}/health`` answers 200 (urllib: the command line must not wait for httpx)."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def running_server() -> ServerState | None:
    """The server ``ollama-cloudrun server`` runs, if its state file is there and it answers."""
    try:
        state = ServerState(**json.loads(state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return state if healthy(state.api_url) else None


def api_url_configured() -> bool:
    """Whether Prefect already knows a server: PREFECT_API_URL from any of Prefect's sources."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def set_prefect_defaults(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Analytics and telemetry off unless the user said otherwise (environment or profile)."""
    from prefect.settings import load_current_profile

    in_profile = {setting.name for setting in load_current_profile().settings}
    for key, value in QUIET_PREFECT_ENV.items():
        if key not in environ and key not in in_profile:
            environ[key] = value


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``path`` (a child started meanwhile keeps them)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def temporary_server_log() -> Path:
    handle, name = tempfile.mkstemp(prefix="ollama-cloudrun-prefect-", suffix=".log")
    os.close(handle)
    return Path(name)


def start_temporary_server(echo: Callable[[str], None], log: Path | None) -> None:
    """Start Prefect's temporary server now (the one a flow would start on first use, reused by
    it) and say so in one line; its output goes to ``log`` (None: to this process's own)."""
    from prefect.server.api.server import SubprocessASGIServer

    echo(
        "No PREFECT_API_URL: starting a temporary Prefect server for this command (10-15 s). "
        "Run `ollama-cloudrun server` in another terminal to keep one for later commands."
    )
    server = SubprocessASGIServer()
    with contextlib.nullcontext() if log is None else output_to(log):
        server.start()


# -- ollama-cloudrun server ------------------------------------------------------------------


class ServerError(RuntimeError):
    """The local Prefect server cannot start, or stopped on its own."""


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def serve(
    echo: Callable[[str], None],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    verbose: bool = False,
    startup_timeout: float = 240.0,
) -> None:
    """Run ``prefect server start`` until SIGINT/SIGTERM (raised by the caller's handlers) or
    until it exits on its own (ServerError). The state file exists exactly while it answers."""
    address = f"http://{host}:{port}"
    api_url = f"{address}/api"
    existing = running_server()
    if existing is not None:
        raise ServerError(
            f"`ollama-cloudrun server` already runs at {existing.api_url} (pid {existing.pid})"
        )
    if not _port_free(host, port):
        if healthy(api_url):
            raise ServerError(
                f"a Prefect server already answers at {api_url}: use it with "
                f"`export PREFECT_API_URL={api_url}`, or pick another port with --port"
            )
        raise ServerError(f"port {port} on {host} is in use; pick another with --port")
    home = cli_home()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "prefect-server.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_API_KEY")
    }
    env.update(
        {
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_API_HOST": host,
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_UI_API_URL": api_url,
        }
    )
    for key, value in QUIET_PREFECT_ENV.items():
        env.setdefault(key, value)
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=None if verbose else out,
            stderr=None if verbose else subprocess.STDOUT,
            start_new_session=True,  # its own group: stopped as a whole, never by a stray Ctrl-C
        )
    state = state_file()
    try:
        echo(f"Starting a Prefect server on {address} (PREFECT_HOME={env['PREFECT_HOME']}) ...")
        try:
            wait_ready(
                process,
                lambda: healthy(api_url),
                timeout=startup_timeout,
                what="prefect server start",
                interval=0.5,
            )
        except RuntimeError as exc:
            raise ServerError(f"{exc}; see {log}") from None
        state.write_text(json.dumps(asdict(ServerState(process.pid, api_url, address, str(log)))))
        echo(f"Prefect server ready: UI {address}, API {api_url}, log {log}")
        echo(f"Later ollama-cloudrun commands use it while it runs (found through {state}).")
        echo(f"For Prefect's own CLI and other tools: export PREFECT_API_URL={api_url}")
        echo("Stop it with Ctrl-C.")
        code = process.wait()
        raise ServerError(f"the Prefect server exited on its own with code {code}; see {log}")
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state.read_text()).get("pid") == process.pid:
                state.unlink()
        stop_process(process, grace=15.0, group=True)
