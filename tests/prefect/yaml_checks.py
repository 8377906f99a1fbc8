"""A strict check of a prefect.yaml, with Prefect's own models as the reference.

Prefect validates prefect.yaml leniently: the deployment model ignores unknown keys, so a typo
such as ``paramters:`` is dropped silently and the deployment gets no parameters. ``problems()``
reports every key, at every level, that Prefect does not know, every entrypoint that does not
load, every parameter (deployment, schedule or trigger) the flow's signature does not accept, and
every step whose arguments do not fit its function.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from prefect.cli.deploy._models import (
    ConcurrencyLimitSpec,
    DeploymentConfig,
    PrefectYamlModel,
    RawScheduleConfig,
    WorkPoolConfig,
)
from prefect.cli.deploy._triggers import _initialize_deployment_triggers
from prefect.events.schemas.deployment_triggers import (
    DeploymentCompoundTrigger,
    DeploymentEventTrigger,
    DeploymentMetricTrigger,
    DeploymentSequenceTrigger,
    deployment_trigger_discriminator,
)
from prefect.flows import Flow, load_flow_from_entrypoint
from pydantic import BaseModel

# The documented home of YAML anchors; Prefect ignores it on purpose.
EXTRA_TOP_LEVEL_KEYS = {"definitions"}
TRIGGER_MODELS: dict[str, type[BaseModel]] = {
    "event": DeploymentEventTrigger,
    "metric": DeploymentMetricTrigger,
    "compound": DeploymentCompoundTrigger,
    "sequence": DeploymentSequenceTrigger,
}
STEP_META_KEYS = {"id", "requires"}


def model_keys(model: type[BaseModel]) -> set[str]:
    """Every key a model accepts: field names and their aliases."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        keys.add(name)
        if info.alias:
            keys.add(info.alias)
    return keys


def _unknown(where: str, mapping: Any, allowed: set[str]) -> list[str]:
    if not isinstance(mapping, dict):
        return [f"{where}: expected a mapping, got {type(mapping).__name__}"]
    return [f"{where}: unknown key {key!r}" for key in sorted(set(mapping) - allowed)]


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _check_steps(where: str, steps: Any) -> list[str]:
    if steps is None:
        return []
    if isinstance(steps, dict):
        steps = [steps]
    found: list[str] = []
    for index, step in enumerate(steps):
        here = f"{where}[{index}]"
        if not isinstance(step, dict) or len(step) != 1:
            found.append(f"{here}: a step is a mapping with exactly one key (the function path)")
            continue
        ((path, kwargs),) = step.items()
        module_name, _, attr = path.rpartition(".")
        try:
            function = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            found.append(f"{here}: cannot import step {path!r}: {exc}")
            continue
        arguments = {k: v for k, v in (kwargs or {}).items() if k not in STEP_META_KEYS}
        try:
            inspect.signature(function).bind(**arguments)
        except TypeError as exc:
            found.append(f"{here}: arguments do not fit {path}: {exc}")
    return found


def _load_flow(root: Path, entrypoint: str) -> Flow[..., Any]:
    path, _, _ = entrypoint.partition(":")
    if not (root / path).is_file():
        raise FileNotFoundError(f"entrypoint file {path} does not exist")
    return load_flow_from_entrypoint(str(root / entrypoint))


def _check_parameters(where: str, flow: Flow[..., Any], parameters: Any) -> list[str]:
    if not isinstance(parameters, dict):
        return [f"{where}: parameters must be a mapping"]
    accepted = set(inspect.signature(flow.fn).parameters)
    found = [
        f"{where}: parameter {key!r} is not in {flow.name}'s signature {sorted(accepted)}"
        for key in sorted(set(parameters) - accepted)
    ]
    concrete = {k: v for k, v in parameters.items() if k in accepted and not _is_template(v)}
    if not found and concrete:
        try:
            flow.validate_parameters(concrete)
        except Exception as exc:
            found.append(f"{where}: parameters rejected by {flow.name}'s signature: {exc}")
    return found


def _check_work_pool(where: str, work_pool: Any, pool_variables: dict[str, set[str]]) -> list[str]:
    found = _unknown(where, work_pool, model_keys(WorkPoolConfig))
    if found or not isinstance(work_pool, dict):
        return found
    known = pool_variables.get(str(work_pool.get("name")))
    job_variables = work_pool.get("job_variables") or {}
    if known is not None:
        found += [
            f"{where}.job_variables: {key!r} is not a variable of pool {work_pool.get('name')!r}"
            for key in sorted(set(job_variables) - known)
        ]
    return found


def _check_trigger(where: str, trigger: Any, flow: Flow[..., Any] | None) -> list[str]:
    if not isinstance(trigger, dict):
        return [f"{where}: a trigger is a mapping"]
    kind = deployment_trigger_discriminator(trigger)
    model = TRIGGER_MODELS.get(kind)
    if model is None:
        return [f"{where}: unknown trigger type {kind!r}"]
    found = _unknown(where, trigger, model_keys(model))
    if flow is not None and trigger.get("parameters") is not None:
        found += _check_parameters(f"{where}.parameters", flow, trigger["parameters"])
    return found


def problems(
    document: Any, root: Path, pool_variables: dict[str, set[str]] | None = None
) -> list[str]:
    """Everything wrong with a loaded prefect.yaml whose entrypoints are relative to ``root``.

    ``pool_variables`` maps a work pool name to the job variables its type accepts.
    """
    pool_variables = pool_variables or {}
    try:
        PrefectYamlModel.model_validate(document)
    except Exception as exc:
        return [f"PrefectYamlModel rejects the file: {exc}"]
    found = _unknown("<top level>", document, model_keys(PrefectYamlModel) | EXTRA_TOP_LEVEL_KEYS)
    for section in ("build", "push", "pull"):
        found += _check_steps(section, document.get(section))
    deployments = document.get("deployments") or []
    names = [d.get("name") for d in deployments if isinstance(d, dict)]
    found += [f"deployment name {n!r} is used twice" for n in set(names) if names.count(n) > 1]
    for index, deployment in enumerate(deployments):
        where = f"deployments[{index}] ({deployment.get('name', '?')})"
        found += _unknown(where, deployment, model_keys(DeploymentConfig))
        for section in ("build", "push", "pull"):
            found += _check_steps(f"{where}.{section}", deployment.get(section))
        if "work_pool" in deployment:
            found += _check_work_pool(f"{where}.work_pool", deployment["work_pool"], pool_variables)
        limit = deployment.get("concurrency_limit")
        if isinstance(limit, dict):
            found += _unknown(f"{where}.concurrency_limit", limit, model_keys(ConcurrencyLimitSpec))
        flow: Flow[..., Any] | None = None
        entrypoint = deployment.get("entrypoint")
        if not entrypoint:
            found.append(f"{where}: no entrypoint")
        else:
            try:
                flow = _load_flow(root, entrypoint)
            except Exception as exc:
                found.append(f"{where}: entrypoint {entrypoint!r} does not load: {exc!r}")
        parameters = deployment.get("parameters") or {}
        if flow is not None:
            found += _check_parameters(f"{where}.parameters", flow, parameters)
        schedules = deployment.get("schedules") or []
        if deployment.get("schedule"):
            schedules = [*schedules, deployment["schedule"]]
        for s_index, schedule in enumerate(schedules):
            s_where = f"{where}.schedules[{s_index}]"
            found += _unknown(s_where, schedule, model_keys(RawScheduleConfig))
            if flow is not None and isinstance(schedule, dict) and schedule.get("parameters"):
                merged = {**parameters, **schedule["parameters"]}
                found += _check_parameters(f"{s_where}.parameters", flow, merged)
        triggers = deployment.get("triggers") or []
        for t_index, trigger in enumerate(triggers):
            found += _check_trigger(f"{where}.triggers[{t_index}]", trigger, flow)
        if triggers:
            try:
                _initialize_deployment_triggers(
                    str(deployment.get("name")), [dict(t) for t in triggers]
                )
            except Exception as exc:
                found.append(f"{where}.triggers: Prefect rejects them: {exc}")
    return found
