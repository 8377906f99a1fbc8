"""Start and stop the local operating environment as one unit.

``LocalStack`` starts, in order: ``python -m emulator.gcp`` (Google Cloud stand-in; writes an env
file), ``prefect server start`` (API, UI and the scheduler), the process work pool, the
deployments from ``prefect.yaml`` (``prefect deploy --all``, which also creates the automation),
and two ``prefect worker start`` processes (``workers``) with the emulator's env file in their
environment, so every flow run talks to the emulator. Prefect hands a flow run to whichever
worker claims it first, so without ``worker_limit`` one worker may claim both parts of a batch
with ``workers=2``; with ``worker_limit=1`` each worker runs one flow run at a time, and the two
parts of a batch started from a shell (``ollama-cloudrun batch --workers 2``) run one on each.
``stop()`` stops them in reverse order; each child runs in its own process group, and the whole
group is killed, so nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import httpx

from tasks.env_files import EnvFileError, parse_env_file
from tasks.processes import free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREFECT_FILE = REPO_ROOT / "prefect.yaml"
LOCAL_WORK_POOL = "local-process"
# Where prefect.yaml's nightly-batch and pipeline deployments read prompts and write results.
SAMPLE_BUCKET = "ollama-cloudrun-prompts"
SAMPLE_PROMPTS = REPO_ROOT / "deployments" / "sample-prompts.jsonl"
EMULATOR_ENV_KEYS = (
    "OLLAMA_CLOUDRUN_API_ENDPOINT",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
)
# Settings that would point a child at another Prefect server or profile: never inherited.
_PREFECT_ISOLATION_KEYS = ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_API_KEY", "PREFECT_HOME")


class StackError(RuntimeError):
    """A part of the local operating environment failed to start or died."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state and how it is reached. ``port=0`` picks a free port."""

    state_dir: Path
    port: int = 4200
    host: str = "127.0.0.1"
    engine: Literal["sim", "llama"] = "sim"
    work_pool: str = LOCAL_WORK_POOL
    prefect_file: Path = DEFAULT_PREFECT_FILE
    register: bool = True
    startup_timeout: float = 240.0
    worker_query_seconds: float = 2.0
    workers: int = 2  # process workers on the pool (batch_inference(workers=N) spreads over them)
    worker_limit: int | None = None  # flow runs each worker runs at once (None: no limit)
    extra_env: Mapping[str, str] = field(default_factory=dict)


def read_env_file(path: Path) -> dict[str, str]:
    """The emulator's env file (tasks.env_files' rules)."""
    try:
        env = parse_env_file(path)
    except EnvFileError as exc:
        raise StackError(str(exc)) from None
    return env


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def tail(self, lines: int = 30) -> str:
        self.log_file.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 15.0) -> None:
        """SIGINT to the group (Prefect's worker and server stop cleanly on it), SIGTERM, then
        SIGKILL to whatever is left in it (a flow-run process, a model server)."""
        stop_process(self.process, grace=grace, signals=(signal.SIGINT, signal.SIGTERM), group=True)
        self.log_file.close()


class LocalStack:
    """The local operating environment. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.port = config.port or free_port(config.host)
        self._children: list[_Child] = []
        self.emulator_env: dict[str, str] = {}

    # -- addresses ---------------------------------------------------------------------------

    @property
    def ui_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def emulator_env_file(self) -> Path:
        return self.state_dir / "gcp" / "emulator.env"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def prefect_env(self) -> dict[str, str]:
        """The environment for a Prefect client (CLI, worker, flow run) of this stack's server."""
        env = {k: v for k, v in os.environ.items() if k not in _PREFECT_ISOLATION_KEYS}
        env.update(
            {
                "PREFECT_HOME": str(self.state_dir / "prefect-home"),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_UI_URL": self.ui_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.config.extra_env)
        return env

    def flow_env(self) -> dict[str, str]:
        """What the worker and its flow runs get: the Prefect client env plus the emulator's."""
        env = self.prefect_env()
        env.update(self.emulator_env)
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(self.config.worker_query_seconds)
        return env

    # -- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_emulator()
            self.seed_sample_prompts()
            self.start_server()
            self.ensure_work_pool()
            if self.config.register:
                self.register_deployments()
            self.start_workers()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every child, newest first. Safe to call twice."""
        errors: list[str] = []
        while self._children:
            child = self._children.pop()
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others, then report
                errors.append(f"{child.name}: {exc!r}")
        if errors:
            raise StackError("could not stop cleanly: " + "; ".join(errors))

    def check_alive(self) -> None:
        """Raise ``StackError`` naming the first child that exited, with its last log lines."""
        for child in self._children:
            code = child.process.poll()
            if code is not None:
                raise StackError(
                    f"{child.name} exited with code {code}; log {child.log_path}:\n{child.tail()}"
                )

    # -- the parts ---------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> _Child:
        log_path = self.logs_dir / f"{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C reaches us, we stop the group
        )
        child = _Child(name=name, process=process, log_path=log_path, log_file=log_file)
        self._children.append(child)
        return child

    def start_emulator(self) -> None:
        env_file = self.emulator_env_file
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.unlink(missing_ok=True)  # a stale file from a previous run must not be read
        argv = [
            sys.executable,
            "-m",
            "emulator.gcp",
            "--state-dir",
            str(env_file.parent),
            "--env-file",
            str(env_file),
            "--ollama-engine",
            self.config.engine,
        ]
        child = self._spawn("emulator-gcp", argv, {**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.config.startup_timeout
        while True:
            self._raise_if_exited(child)
            if env_file.exists():
                env = read_env_file(env_file)
                if all(key in env for key in EMULATOR_ENV_KEYS):
                    break
            if time.monotonic() > deadline:
                raise StackError(f"emulator.gcp wrote no env file in time:\n{child.tail()}")
            time.sleep(0.2)
        self._wait_http(child, env["OLLAMA_CLOUDRUN_API_ENDPOINT"], deadline, any_status=True)
        self.emulator_env = env

    def seed_sample_prompts(self) -> None:
        """gs://ollama-cloudrun-prompts/prompts/sample.jsonl in the emulated Cloud Storage, so the
        deployments' default parameters work on a click (an existing object is left alone)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.storage import Client

        client = Client(
            project=self.emulator_env["GOOGLE_CLOUD_PROJECT"],
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.emulator_env["STORAGE_EMULATOR_HOST"]},
        )
        bucket = client.lookup_bucket(SAMPLE_BUCKET) or client.create_bucket(SAMPLE_BUCKET)
        blob = bucket.blob("prompts/sample.jsonl")
        if not blob.exists():
            blob.upload_from_filename(str(SAMPLE_PROMPTS), if_generation_match=0)

    def process_groups(self) -> list[int]:
        """The process group ids of the running children (each child leads its own group)."""
        return [child.process.pid for child in self._children]

    def worker_pids(self) -> list[int]:
        """The process workers' pids, in the order they were started."""
        return [c.process.pid for c in self._children if c.name.startswith("prefect-worker-")]

    def start_server(self) -> None:
        env = self.prefect_env()
        env.update(
            {
                "PREFECT_SERVER_API_HOST": self.config.host,
                "PREFECT_SERVER_API_PORT": str(self.port),
                # Without this the UI of a server on any port but 4200 calls :4200 for its API.
                "PREFECT_SERVER_UI_API_URL": self.api_url,
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            }
        )
        argv = [sys.executable, "-m", "prefect", "server", "start"]
        argv += ["--host", self.config.host, "--port", str(self.port)]
        child = self._spawn("prefect-server", argv, env)
        deadline = time.monotonic() + self.config.startup_timeout
        self._wait_http(child, f"{self.api_url}/health", deadline)

    def ensure_work_pool(self) -> None:
        """The process work pool, with Prefect's default job template; an existing one is kept."""
        from prefect.workers.process import ProcessWorker

        template = ProcessWorker.get_default_base_job_template()
        body = {"name": self.config.work_pool, "type": "process", "base_job_template": template}
        response = httpx.post(f"{self.api_url}/work_pools/", json=body, timeout=30)
        if response.status_code not in (201, 409):
            raise StackError(
                f"creating work pool {self.config.work_pool!r}: "
                f"HTTP {response.status_code} {response.text}"
            )

    def register_deployments(self) -> None:
        """``prefect deploy --all`` from prefect.yaml: deployments, schedules and the automation."""
        argv = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
        argv += ["--prefect-file", str(self.config.prefect_file)]
        result = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            env=self.prefect_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.config.startup_timeout,
            check=False,
        )
        (self.logs_dir / "prefect-deploy.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StackError(
                f"prefect deploy failed (exit {result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )

    def start_workers(self) -> None:
        """``workers`` process workers on the pool, each named and logging to its own file."""
        for k in range(1, self.config.workers + 1):
            self._spawn(f"prefect-worker-{k}", self.worker_argv(k), self.flow_env())

    def worker_argv(self, k: int) -> list[str]:
        """The command line of worker ``k`` (named ``local-worker-<k>``)."""
        argv = [sys.executable, "-m", "prefect", "worker", "start"]
        argv += ["--pool", self.config.work_pool, "--type", "process"]
        argv += ["--name", f"local-worker-{k}"]
        if self.config.worker_limit is not None:
            argv += ["--limit", str(self.config.worker_limit)]
        return argv

    def deployment_names(self) -> list[str]:
        """``flow/deployment`` names registered on this stack's server, sorted."""
        response = httpx.post(f"{self.api_url}/deployments/filter", json={}, timeout=30)
        response.raise_for_status()
        flows = httpx.post(f"{self.api_url}/flows/filter", json={}, timeout=30)
        flows.raise_for_status()
        flow_names = {f["id"]: f["name"] for f in flows.json()}
        return sorted(f"{flow_names.get(d['flow_id'], '?')}/{d['name']}" for d in response.json())

    # -- helpers -----------------------------------------------------------------------------

    def _raise_if_exited(self, child: _Child) -> None:
        code = child.process.poll()
        if code is not None:
            raise StackError(f"{child.name} exited during start-up (code {code}):\n{child.tail()}")

    def _wait_http(
        self, child: _Child, url: str, deadline: float, *, any_status: bool = False
    ) -> None:
        """Poll ``url`` until it answers (2xx, or any HTTP answer when ``any_status``)."""
        last = "no answer yet"
        while time.monotonic() < deadline:
            self._raise_if_exited(child)
            try:
                response = httpx.get(url, timeout=5)
                if any_status or response.is_success:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise StackError(f"{child.name} not ready at {url} ({last}):\n{child.tail()}")


@contextmanager
def running_stack(config: StackConfig) -> Iterator[LocalStack]:
    """``with running_stack(cfg) as stack:`` — started, and always stopped."""
    stack = LocalStack(config)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
