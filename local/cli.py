"""Command line of the local operating environment (``scripts/local_stack.py``)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Literal

import typer

from local.stack import DEFAULT_PREFECT_FILE, REPO_ROOT, LocalStack, StackConfig, StackError

DEFAULT_STATE_DIR = REPO_ROOT / ".local" / "stack"

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Prefect server/UI port (0: a free one).")] = 4200,
    engine: Annotated[
        str, typer.Option(help="Model engine behind emulated Cloud Run services: sim or llama.")
    ] = "sim",
    state_dir: Annotated[
        Path, typer.Option(help="Prefect database, emulator state and logs.")
    ] = DEFAULT_STATE_DIR,
    prefect_file: Annotated[Path, typer.Option(help="Deployments to register.")] = (
        DEFAULT_PREFECT_FILE
    ),
    register: Annotated[bool, typer.Option(help="Run `prefect deploy --all`.")] = True,
    worker_limit: Annotated[
        int | None,
        typer.Option(
            help="Flow runs each worker runs at once (default: no limit); 1 spreads the parts "
            "of a batch started with --workers 2 one per worker."
        ),
    ] = None,
) -> None:
    """Start Prefect's server and UI, emulator.gcp and two process workers; Ctrl-C stops them."""
    if engine not in ("sim", "llama"):
        raise typer.BadParameter("engine must be 'sim' or 'llama'", param_hint="--engine")
    if worker_limit is not None and worker_limit < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--worker-limit")
    chosen: Literal["sim", "llama"] = "llama" if engine == "llama" else "sim"
    config = StackConfig(
        state_dir=state_dir,
        port=port,
        engine=chosen,
        prefect_file=prefect_file.resolve(),
        register=register,
        worker_limit=worker_limit,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    stack = LocalStack(config)
    typer.echo(f"Starting the local operating environment (state and logs in {stack.state_dir})")
    try:
        stack.start()
        typer.echo(f"\nPrefect UI:        {stack.ui_url}")
        typer.echo(f"Prefect API:       {stack.api_url}")
        typer.echo(f"Emulator env file: {stack.emulator_env_file}")
        limit = f", each running at most {worker_limit}" if worker_limit else ""
        typer.echo(
            f"Work pool:         {config.work_pool} ({config.workers} process workers{limit})"
        )
        for name in stack.deployment_names():
            typer.echo(f"  deployment       {name}")
        typer.echo(
            "\nIn another shell, to use the CLI against this stack:\n"
            f"  eval $({Path('scripts/local_stack.py')} env --state-dir {stack.state_dir}"
            f" --port {stack.port})"
        )
        typer.echo("\nPress Ctrl-C to stop everything.")
        while True:
            stack.check_alive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        typer.echo("\nStopping…")
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        stack.stop()
        typer.echo("Stopped: no process left running.")


@app.command()
def env(
    port: Annotated[int, typer.Option(help="Port the stack's server listens on.")] = 4200,
    state_dir: Annotated[Path, typer.Option(help="The stack's state dir.")] = DEFAULT_STATE_DIR,
) -> None:
    """Print `export` lines that point a shell at a running stack (Prefect API and emulator)."""
    stack = LocalStack(StackConfig(state_dir=state_dir, port=port))
    if not stack.emulator_env_file.exists():
        typer.echo(f"error: no running stack: {stack.emulator_env_file} is missing", err=True)
        raise typer.Exit(1)
    from local.stack import read_env_file

    stack.emulator_env = read_env_file(stack.emulator_env_file)
    values = {
        "PREFECT_API_URL": stack.api_url,
        "PREFECT_HOME": str(stack.state_dir / "prefect-home"),
        **stack.emulator_env,
    }
    for key, value in values.items():
        typer.echo(f"export {key}='{value}'")


def main() -> None:
    app()
