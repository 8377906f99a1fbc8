"""ollama-cloudrun (also python -m flows): run any flow with its parameters.

Options are generated from each flow's parameter model (flows/parameters.py, pydantic only), so
a new flow needs one entry in FLOWS and no CLI code:

    ollama-cloudrun deploy --model gemma2:9b
    ollama-cloudrun teardown --sweep --idle-hours 24
    ollama-cloudrun --env-file .emulator-state/emulator.env smoke-test

Help costs no Prefect import: the command list comes from FLOWS, a command's options from its
parameter model; Prefect, the Google clients and the flow module load only when a command runs.
--env-file loads KEY=VALUE lines into the environment before anything imports google-auth (which
reads GCE_METADATA_HOST at import). Exit status: 0 ok, 1 the flow failed (one paragraph, no
traceback unless --verbose), 2 bad parameters, 130 SIGINT, 143 SIGTERM.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import signal
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from flows.cli_options import (
    leaves as model_leaves,
)
from flows.cli_options import (
    nest,
    option_type,
    parse_value,
    shown_default,
    validation_errors,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

PROG = "ollama-cloudrun"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SIGINT = 130  # 128 + the signal's number, as a shell reports a process a signal ended
EXIT_SIGTERM = 143


@dataclass(frozen=True)
class FlowCommand:
    summary: str  # one line for the command list
    flow: str  # "module:function", imported only when the command runs
    parameters: str  # "module:Model", the flow's one parameter (``params``); no Prefect import
    options: str | None = None  # "module:Model", the flow's other parameters (``workers``)


FLOWS: dict[str, FlowCommand] = {
    "deploy": FlowCommand(
        "Deploy Ollama with the model on a Cloud Run GPU service (or confirm it), then smoke-test.",
        "flows.deploy:deploy",
        "flows.parameters:DeployParameters",
    ),
    "smoke-test": FlowCommand(
        "Check that the service answers with an ID token and time a short generation.",
        "flows.smoke_test:smoke_test",
        "flows.parameters:SmokeTestParameters",
    ),
    "batch": FlowCommand(
        "Run prompts from Cloud Storage or local files through the service; results beside them.",
        "flows.batch:batch_inference",
        "flows.parameters:BatchParams",
        "flows.parameters:BatchRunOptions",
    ),
    "teardown": FlowCommand(
        "Delete the service, images, staging objects and service account (or sweep idle ones).",
        "flows.teardown:teardown",
        "flows.parameters:TeardownParameters",
    ),
    "pipeline": FlowCommand(
        "Deploy, smoke-test, run a batch and tear down, as one Prefect run.",
        "flows.pipeline:pipeline",
        "flows.parameters:PipelineParameters",
    ),
    "results": FlowCommand(
        "Write a batch output's final answer set (one record per input id) to one JSONL file.",
        "flows.results:collect_results",
        "flows.parameters:ResultsParams",
    ),
    "check": FlowCommand(
        "Fail when a managed service's spec or IAM policy drifted from what deploy declared.",
        "flows.check:check",
        "flows.parameters:CheckParameters",
    ),
    "plan": FlowCommand(
        "Show what deploy would change, per resource, without changing anything.",
        "flows.plan:plan",
        "flows.parameters:DeployParameters",
    ),
}
# ``results OUTPUT``: a bare word right after these commands is the value of this option.
POSITIONAL = {"results": "--output"}
SERVER_SUMMARY = "Run a local Prefect server (API and UI) that later commands use; Ctrl-C stops it."


class Terminated(BaseException):
    """SIGTERM arrived. Raised by the CLI's handler (a BaseException, like KeyboardInterrupt, so
    flows do not catch it) so that ``finally`` blocks and atexit (Prefect stops its temporary
    server there) still run."""


def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the cleanup finish
    raise Terminated


def _stop_reason(exc: BaseException) -> int | None:
    """143 or 130 when ``exc`` (or what it was raised from) is a signal, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Terminated) or type(current).__name__ == "TerminationSignal":
            return EXIT_SIGTERM  # Prefect's own: its flow engine turns SIGTERM into one
        if isinstance(current, KeyboardInterrupt):
            return EXIT_SIGINT
        current = current.__cause__ or current.__context__
    return None


def _stopped(command: str, code: int) -> NoReturn:
    name = "SIGTERM" if code == EXIT_SIGTERM else "SIGINT"
    typer.echo(f"{PROG} {command}: stopped by {name}", err=True)
    raise typer.Exit(code)


# -- env file and global options -----------------------------------------------------------


def load_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (tasks.env_files' rules) into os.environ."""
    from tasks.env_files import EnvFileError, parse_env_file

    if not path.is_file():
        raise typer.BadParameter(f"env file {path} does not exist", param_hint="--env-file")
    try:
        loaded = parse_env_file(path)
    except EnvFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--env-file") from None
    os.environ.update(loaded)
    return loaded


def hoist_global_options(argv: list[str]) -> list[str]:
    """Global options may follow the command: move ``--env-file PATH`` and ``--verbose`` first."""
    front: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest += [arg, *args]
        elif arg == "--env-file":
            front += [arg, *([value] if (value := next(args, None)) is not None else [])]
        elif arg.startswith("--env-file=") or arg in ("--verbose", "-v"):
            front.append(arg)
        else:
            rest.append(arg)
    return front + rest


def _command_name(argv: list[str]) -> str | None:
    """The command word of a hoisted argv (global options skipped)."""
    args = iter(argv)
    for arg in args:
        if arg == "--env-file":
            next(args, None)
        elif not arg.startswith("-"):
            return "smoke-test" if arg == "smoke_test" else arg
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ollama-cloudrun")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {_version()}")
        raise typer.Exit()


# -- options from a parameter model (flows/cli_options.py) --------------------------------


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def make_command(command: str, spec: FlowCommand) -> Callable[..., None]:
    """A Typer command whose options are the fields of the flow's parameter model (and of its
    other parameters' model, ``spec.options``)."""
    from pydantic import ValidationError

    model: type[BaseModel] = _load(spec.parameters)
    extra: type[BaseModel] | None = _load(spec.options) if spec.options else None
    leaves = {name: (field, path) for name, field, path in model_leaves(model)}
    extra_leaves = (
        {name: (field, path) for name, field, path in model_leaves(extra)} if extra else {}
    )
    if clash := leaves.keys() & extra_leaves.keys():
        raise AssertionError(f"{spec.options} repeats options of {spec.parameters}: {clash}")
    parameters = []
    for name, (field, _) in (leaves | extra_leaves).items():
        cli_type, metavar, note = option_type(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        shown = "[required]" if field.is_required() else shown_default(default)
        help_text = " ".join(x for x in (field.description or "", note, shown) if x)
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if cli_type is bool else [flag]
        option = typer.Option(
            None, *decls, help=help_text, show_default=False, metavar=metavar or None
        )
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=cli_type | None
            )
        )
    sub_models = {part for _, path in leaves.values() for part in path}

    def run(ctx: typer.Context, **options: Any) -> None:
        given = {
            name: parse_value((leaves | extra_leaves)[name][0].annotation, value)
            for name, value in options.items()
            if value is not None and value != []
        }
        errors = []
        try:
            params = model.model_validate(
                nest({n: p for n, (_, p) in leaves.items()}, _only(given, leaves))
            )
        except ValidationError as exc:
            errors.append(validation_errors(exc, sub_models))
        flow_options: dict[str, Any] = {}
        if extra is not None:
            try:
                chosen = extra.model_validate(_only(given, extra_leaves))
                flow_options = chosen.model_dump(exclude_unset=True)
            except ValidationError as exc:
                errors.append(validation_errors(exc, set()))
        if errors:
            typer.echo(f"Error: invalid parameters for {command}: {'; '.join(errors)}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        verbose = bool(ctx.obj and ctx.obj.get("verbose"))
        result = _run_flow(command, spec, params, verbose, **flow_options)
        typer.echo(json.dumps(result, indent=2, default=str))

    signature = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *parameters,
    ]
    run.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    run.__doc__ = spec.summary
    return run


def _only(given: dict[str, Any], names: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in given.items() if name in names}


# -- running a flow ------------------------------------------------------------------------


def _quiet_console_tracebacks() -> None:
    """Prefect logs a failed run's traceback on the console; the CLI prints one paragraph."""
    import logging

    def strip(record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "prefect._internal"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.addFilter(strip)


def _one_paragraph(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


@contextmanager
def _prefect_server(verbose: bool) -> Iterator[None]:
    """PREFECT_API_URL as configured, else the ``ollama-cloudrun server``, else a temporary one."""
    from flows import prefect_api

    prefect_api.set_prefect_defaults()
    if prefect_api.api_url_configured():
        yield
        return
    running = prefect_api.running_server()
    if running is not None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        typer.echo(f"Using the Prefect server of `{PROG} server` at {running.api_url}", err=True)
        os.environ["PREFECT_API_URL"] = running.api_url  # for any child process
        with temporary_settings(updates={PREFECT_API_URL: running.api_url}):
            yield
        return
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED

    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield  # Prefect itself says that it needs PREFECT_API_URL
        return
    log = None if verbose else prefect_api.temporary_server_log()
    try:
        try:
            prefect_api.start_temporary_server(lambda line: typer.echo(line, err=True), log)
        except Exception:  # it did not start: its log says why
            if log is not None:
                typer.echo(f"(the temporary Prefect server's log: {log})", err=True)
                log = None
            raise
        yield
    finally:
        if log is not None:
            log.unlink(missing_ok=True)


def _run_flow(
    command: str, spec: FlowCommand, params: BaseModel, verbose: bool, **flow_options: Any
) -> Any:
    """Run the flow in this process (``flow_options``: its parameters besides ``params``); exit
    1 when it fails, 130/143 when a signal stops it."""
    import asyncio

    os.environ["OLLAMA_CLOUDRUN_PROGRESS"] = "1"
    # Without a Prefect server the flow starts a temporary one; 20 s is too short on small hosts.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    try:
        with _prefect_server(verbose):
            fn = _load(spec.flow)  # imports Prefect, which sets up its console logging
            if not verbose:
                _quiet_console_tracebacks()
            result = fn(params=params, **flow_options)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            return result
    except typer.Exit:
        raise
    except BaseException as exc:  # the flow failed or a signal stopped it: one line each
        code = _stop_reason(exc)
        if verbose:
            import traceback

            traceback.print_exception(exc)
        if code is not None:
            _stopped(command, code)
        typer.echo(f"Error: flow {command} failed: {_one_paragraph(exc)}", err=True)
        # An error may say it is a refusal to start (a held lease: 2), not a failure.
        raise typer.Exit(getattr(exc, "exit_code", EXIT_FAILED)) from None


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _server_command(
    ctx: typer.Context,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            min=1,
            max=65535,
            metavar="PORT",
            help="Port on 127.0.0.1 (Prefect's usual one).",
        ),
    ] = 4200,
) -> None:
    from flows import prefect_api

    verbose = bool(ctx.obj and ctx.obj.get("verbose"))
    try:
        prefect_api.serve(lambda line: typer.echo(line, err=True), port=port, verbose=verbose)
    except prefect_api.ServerError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    except BaseException as exc:
        code = _stop_reason(exc)
        if code is None:
            raise
        _stopped("server", code)


_server_command.__doc__ = SERVER_SUMMARY


# -- the app -------------------------------------------------------------------------------


def _stub(summary: str) -> Callable[[], None]:
    def listed() -> None:
        raise AssertionError("only the command being run is built in full")

    listed.__doc__ = summary
    return listed


def build_app(command: str | None = None) -> typer.Typer:
    """The Typer app; only ``command`` (if it is one of FLOWS) gets its options, so only its
    parameter model is imported. The others are listed with their summary."""
    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        rich_markup_mode=None,  # plain text, as click prints it
        pretty_exceptions_enable=False,
        help=f"Run the ollama-cloudrun flows (Ollama on Cloud Run GPUs) with their parameters. "
        f"Global options may also follow the command. Exit status: 0 ok, {EXIT_FAILED} the "
        f"flow failed, {EXIT_USAGE} bad parameters, {EXIT_SIGINT} SIGINT, {EXIT_SIGTERM} SIGTERM.",
    )

    @app.callback()
    def _global(
        ctx: typer.Context,
        env_file: Annotated[
            Path | None,
            typer.Option(
                "--env-file",
                metavar="PATH",
                help="Load KEY=VALUE lines into the environment first (e.g. the emulator's).",
            ),
        ] = None,
        verbose: Annotated[
            bool,
            typer.Option("--verbose", "-v", help="Show tracebacks and Prefect's server output."),
        ] = False,
        version: Annotated[
            bool,
            typer.Option(
                "--version",
                callback=_print_version,
                is_eager=True,
                help="Print the version and exit.",
            ),
        ] = False,
    ) -> None:
        if env_file is not None:
            load_env_file(env_file)
        ctx.obj = {"verbose": verbose}

    for name, spec in FLOWS.items():
        body = make_command(name, spec) if name == command else _stub(spec.summary)
        app.command(name=name, help=spec.summary, short_help=spec.summary)(body)
    app.command(name="server", help=SERVER_SUMMARY, short_help=SERVER_SUMMARY)(_server_command)
    return app


def main(argv: list[str] | None = None) -> None:
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    signal.signal(signal.SIGTERM, _on_sigterm)
    command = _command_name(args)
    if command == "smoke-test":
        args = [("smoke-test" if a == "smoke_test" else a) for a in args]
    at = args.index(command) + 1 if command in POSITIONAL else len(args)
    if at < len(args) and not args[at].startswith("-"):
        args.insert(at, POSITIONAL[str(command)])
    try:
        build_app(command)(args=args, prog_name=PROG)
    except (Terminated, KeyboardInterrupt) as exc:  # outside a command: while parsing
        code = _stop_reason(exc) or EXIT_SIGTERM
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()
