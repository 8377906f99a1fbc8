"""Drift: what deploy declared against what a service now is. Pure.

``service_fingerprint`` (tasks/cloud_run.py) is what deploy declares, recorded as JSON in the
service's ``ollama-cloudrun/declared`` annotation; ``spec_diff`` compares two fingerprints field
by field (the plan and the check flows); ``policy_drift`` names what a private service's policy
must not hold.
"""

from __future__ import annotations

import json
from typing import Any

from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from tasks.cloud_run import INVOKER_ROLE, PUBLIC_MEMBERS
from tasks.models import DECLARED_ANNOTATION


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → {"a.b.c": leaf}; lists are leaves except lists of dicts (indexed)."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        flat = {}
        for i, inner in enumerate(value):
            flat.update(flatten(inner, f"{prefix}[{i}]"))
        return flat
    return {prefix: value}


def spec_diff(declared: dict[str, Any], live: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, declared, live) for every field of two fingerprints that differs."""
    want, have = flatten(declared), flatten(live)
    return [
        (key, want.get(key), have.get(key))
        for key in sorted(set(want) | set(have))
        if _normal(want.get(key)) != _normal(have.get(key))
    ]


def _normal(value: Any) -> Any:
    # JSON turns tuples into lists; compare what the annotation round-trip would give.
    return json.loads(json.dumps(value))


def declared_fingerprint(service: run_v2.Service) -> dict[str, Any] | None:
    """The fingerprint deploy declared for ``service`` (its annotation), or None."""
    text = service.annotations.get(DECLARED_ANNOTATION)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def policy_drift(policy: policy_pb2.Policy) -> list[tuple[str, str]]:
    """(binding, problem) for what a private service's policy must not hold: a public member
    in any role, or any role but ``roles/run.invoker``."""
    problems = []
    for binding in policy.bindings:
        public = sorted(m for m in binding.members if m in PUBLIC_MEMBERS)
        if public:
            problems.append(
                (binding.role, f"granted to {', '.join(public)}: the service is public")
            )
        if binding.role != INVOKER_ROLE:
            members = ", ".join(sorted(binding.members))
            problems.append((binding.role, f"unexpected role (only {INVOKER_ROLE}): {members}"))
    return problems
