"""The CLI's options from a flow's parameter model: types, metavars, defaults, sub-models.

Pure helpers for ``flows.cli.make_command`` (pydantic and typing only, so help stays fast): a
sub-model's fields become options of their own (``engine.in_flight`` → ``--in-flight``).
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

if TYPE_CHECKING:
    from pydantic import BaseModel


def option_type(annotation: Any) -> tuple[Any, str, str]:
    """The CLI type for a field annotation, its metavar, and a note for the help text."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return option_type(inner[0])
        lists = [a for a in inner if get_origin(a) is list and get_args(a)[0] in inner]
        if len(inner) == 2 and lists:  # X or list[X] (a string kept as saved): repeatable
            return option_type(lists[0])
        return str, "TEXT", ""
    if origin is Literal:
        return str, "[" + "|".join(str(a) for a in get_args(annotation)) + "]", ""
    if origin is list and get_args(annotation) in ((str,), (int,), (float,)):
        item = get_args(annotation)[0]
        return list[item], METAVARS[item], "Repeat for several."  # type: ignore[valid-type]
    if annotation in METAVARS:
        return annotation, METAVARS[annotation], ""
    return str, "JSON", ""


METAVARS: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "NUMBER", bool: "", Path: "PATH"}


def parse_value(annotation: Any, value: Any) -> Any:
    if option_type(annotation)[1] == "JSON" and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def validation_errors(exc: Any, sub_models: set[str]) -> str:
    """pydantic's errors as ``--option: message`` (sub-model names dropped); a model rule's
    message alone."""
    found = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        loc = [str(p) for p in error["loc"] if p not in sub_models]
        where = ".".join(loc).replace("_", "-")
        found.append(f"--{where}: {message}" if where else message)
    return "; ".join(found)


def shown_default(default: Any) -> str:
    if default is None or default == []:
        return ""  # the description says what happens without it
    if isinstance(default, bool):
        return "[default: yes]" if default else "[default: no]"
    if isinstance(default, list):
        return "[default: " + " ".join(str(d) for d in default) + "]"
    return f"[default: {default}]"


def leaves(
    model: type[BaseModel], path: tuple[str, ...] = ()
) -> Iterator[tuple[str, Any, tuple[str, ...]]]:
    """(name, field, path) for every option: a sub-model's fields become options of their own
    (``engine.in_flight`` → ``--in-flight``); ``path`` says where the value goes."""
    from pydantic import BaseModel as Model

    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, Model):
            yield from leaves(sub, (*path, name))
        else:
            yield name, field, path


def nest(leaves: dict[str, tuple[str, ...]], given: dict[str, Any]) -> dict[str, Any]:
    """Flat option values → the model's nested input."""
    nested: dict[str, Any] = {}
    for name, value in given.items():
        target = nested
        for part in leaves[name]:
            target = target.setdefault(part, {})
        target[name] = value
    return nested
