"""``ollama-cloudrun`` (also ``python -m flows``): run any flow with its parameters.

Options are generated from each flow's parameters (a pydantic model's fields flattened, typed), so
a new flow needs one line in ``FLOWS`` and no CLI code::

    ollama-cloudrun deploy --model gemma2:9b
    ollama-cloudrun teardown --sweep --ttl-hours 24
    ollama-cloudrun --env-file .emulator-state/emulator.env smoke-test

``--env-file PATH`` loads KEY=VALUE lines into the environment before anything imports
google-auth (which reads GCE_METADATA_HOST at import). Exit status 0 on success, 1 when the flow
fails (one paragraph, no traceback), 2 on bad parameters.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import typer

# command → "module:flow"; modules are imported only when their command is used or listed.
FLOWS: dict[str, str] = {
    "deploy": "flows.deploy:deploy",
    "smoke-test": "flows.smoke_test:smoke_test",
    "teardown": "flows.teardown:teardown",
    "batch": "flows.batch:batch_inference",
    "pipeline": "flows.pipeline:pipeline",
}
EXIT_FAILED = 1
EXIT_USAGE = 2


def load_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (``#`` comments, blank lines and ``export`` allowed) into os.environ."""
    if not path.is_file():
        raise typer.BadParameter(f"env file {path} does not exist", param_hint="--env-file")
    loaded: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise typer.BadParameter(
                f"{path}:{number}: expected KEY=VALUE", param_hint="--env-file"
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        loaded[key.strip()] = value
    os.environ.update(loaded)
    return loaded


def _pop_env_file(argv: list[str]) -> tuple[list[str], Path | None]:
    """Take ``--env-file PATH`` / ``--env-file=PATH`` out of argv (anywhere on the line)."""
    rest: list[str] = []
    env_file: Path | None = None
    args = iter(argv)
    for arg in args:
        if arg == "--env-file":
            value = next(args, None)
            if value is None:
                raise typer.BadParameter("needs a PATH", param_hint="--env-file")
            env_file = Path(value)
        elif arg.startswith("--env-file="):
            env_file = Path(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, env_file


def load_flow(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


# -- options from parameters ---------------------------------------------------------------


def _option_type(annotation: Any) -> tuple[Any, str]:
    """The CLI type for a field annotation, and a note for the help text."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _option_type(inner[0])
        return str, ""
    if origin is Literal:
        return str, "one of " + "/".join(str(a) for a in get_args(annotation)) + ";"
    if origin is list and get_args(annotation) in ((str,), (int,), (float,)):
        return list[get_args(annotation)[0]], "repeat for several;"  # type: ignore[misc]
    if annotation in (str, int, float, bool):
        return annotation, ""
    if annotation is Path:
        return Path, ""
    return str, "JSON;"


def _fields(fn: Callable[..., Any]) -> list[tuple[str, Any, Any, str, str | None]]:
    """(name, annotation, default, description, model-parameter) for every CLI option.

    A field that is itself a model (a sub-model) gives one flat option per field of its own; its
    model-parameter is then dotted (``params.engine``), so the value lands in the sub-model.
    """
    from pydantic import BaseModel

    def model_fields(model: type[BaseModel], path: str) -> list[tuple[str, Any, Any, str, str]]:
        leaves = []
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                leaves += model_fields(field.annotation, f"{path}.{name}")
                continue
            default = ... if field.is_required() else field.get_default(call_default_factory=True)
            leaves.append((name, field.annotation, default, field.description or "", path))
        return leaves

    hints = inspect.get_annotations(getattr(fn, "fn", fn), eval_str=True)
    found: list[tuple[str, Any, Any, str, str | None]] = []
    for pname, param in inspect.signature(getattr(fn, "fn", fn)).parameters.items():
        annotation = hints.get(pname, str)
        model = _model_type(annotation)
        if model is not None and issubclass(model, BaseModel):
            found += model_fields(model, pname)
        else:
            default = ... if param.default is inspect.Parameter.empty else param.default
            found.append((pname, annotation, default, "", None))
    return found


def _model_type(annotation: Any) -> Any:
    from pydantic import BaseModel

    candidates = [annotation, *get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _parse_value(annotation: Any, value: Any) -> Any:
    _, note = _option_type(annotation)
    if note == "JSON;" and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _quiet_console_tracebacks() -> None:
    """Prefect logs a failed run's traceback on the console; the CLI prints one paragraph."""

    def strip(record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.addFilter(strip)


def _one_paragraph(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def make_command(command: str, fn: Callable[..., Any]) -> Callable[..., None]:
    from pydantic import BaseModel, ValidationError

    fields = _fields(fn)
    parameters = []
    for name, annotation, default, description, _ in fields:
        cli_type, note = _option_type(annotation)
        shown = "required" if default is ... else f"default: {default}"
        help_text = " ".join(x for x in (description, note, f"({shown})") if x)
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if cli_type is bool else [flag]
        parameters.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=help_text, show_default=False),
                annotation=cli_type | None,
            )
        )

    def run(**options: Any) -> None:
        given = {k: v for k, v in options.items() if v is not None and v != []}
        kwargs: dict[str, Any] = {}
        models: dict[str, dict[str, Any]] = {}
        for name, annotation, _, _, model_param in fields:
            if name not in given:
                continue
            value = _parse_value(annotation, given[name])
            if model_param is None:
                kwargs[name] = value
            else:
                top, *subs = model_param.split(".")
                values = models.setdefault(top, {})
                for sub in subs:
                    values = values.setdefault(sub, {})
                values[name] = value
        hints = inspect.get_annotations(getattr(fn, "fn", fn), eval_str=True)
        sub_models = {p for f in fields if f[4] for p in f[4].split(".")[1:]}
        try:
            for pname in {f[4].split(".")[0] for f in fields if f[4] is not None}:
                model: type[BaseModel] = _model_type(hints[pname])
                kwargs[pname] = model.model_validate(models.get(pname, {}))
        except ValidationError as exc:
            errors = "; ".join(
                "--"
                + ".".join(str(p) for p in e["loc"] if p not in sub_models).replace("_", "-")
                + f": {e['msg']}"
                if e["loc"]
                else str(e["msg"])
                for e in exc.errors()
            )
            typer.echo(f"Error: invalid parameters for {command}: {errors}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        _quiet_console_tracebacks()
        try:
            result = fn(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the flow failed: one paragraph, no traceback
            typer.echo(f"Error: flow {command} failed: {_one_paragraph(exc)}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        typer.echo(json.dumps(result, indent=2, default=str))

    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__doc__ = (inspect.getdoc(getattr(fn, "fn", fn)) or "").split("\n")[0]
    return run


async def _await(awaitable: Any) -> Any:
    return await awaitable


def build_app(only: str | None = None) -> typer.Typer:
    """The Typer app; with ``only``, only that flow's module is imported."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])

    @app.callback()
    def _group() -> None:
        """Keep subcommands even when only one flow is loaded."""

    for command, target in FLOWS.items():
        if only is not None and command != only:
            continue
        try:
            fn = load_flow(target)
        except (ImportError, AttributeError):
            continue  # a flow written later, or not installed here: skip it
        app.command(name=command)(make_command(command, fn))
    return app


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args, env_file = _pop_env_file(args)
        if env_file is not None:
            load_env_file(env_file)
    except typer.BadParameter as exc:
        typer.echo(f"Error: {exc.param_hint}: {exc.message}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    os.environ["OLLAMA_CLOUDRUN_PROGRESS"] = "1"
    # Without a Prefect server the flow starts a temporary one; 20 s is too short on small hosts.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    command = next((a for a in args if not a.startswith("-")), None)
    if command == "smoke_test":
        args[args.index(command)] = command = "smoke-test"
    app = build_app(command if command in FLOWS else None)
    app(args=args, prog_name="ollama-cloudrun")


if __name__ == "__main__":
    main()
