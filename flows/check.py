"""Flow ``check``: has anyone changed a managed service behind the project's back?

For every service labelled ``managed-by=ollama-cloudrun`` in ``regions``: its live spec against
the one ``deploy`` declared (``cloud_run.service_fingerprint``, recorded in the service's
``ollama-cloudrun/declared`` annotation), field by field; and its IAM policy against the expected
one (``roles/run.invoker`` only, never ``allUsers`` / ``allAuthenticatedUsers``). The differences
are a table artifact (``drift-check``); the run ends Failed when there are any, so an automation
can notify. Read-only.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.parameters import CheckParameters
from tasks import cloud_run, drift
from tasks.clients import resolve_cloud
from tasks.errors import DriftError

ARTIFACT_KEY = "drift-check"


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value, sort_keys=True)[:200]


def service_differences(service: Any, policy: Any) -> list[dict[str, str]]:
    """The table rows for one service: spec fields, then IAM bindings."""
    rows = []
    declared = drift.declared_fingerprint(service)
    if declared is None:
        rows.append(
            {
                "service": service.name,
                "what": "spec",
                "field": "ollama-cloudrun/declared",
                "declared": "(none recorded)",
                "live": "deployed before drift checks, or the annotation was removed: redeploy",
            }
        )
    else:
        live = cloud_run.service_fingerprint(service)
        for field, want, have in drift.spec_diff(declared, live):
            rows.append(
                {
                    "service": service.name,
                    "what": "spec",
                    "field": field,
                    "declared": _show(want),
                    "live": _show(have),
                }
            )
    for role, problem in drift.policy_drift(policy):
        rows.append(
            {
                "service": service.name,
                "what": "IAM policy",
                "field": role,
                "declared": f"{cloud_run.INVOKER_ROLE} for named members only",
                "live": problem,
            }
        )
    return rows


@flow(name="check")
def check(params: CheckParameters | None = None) -> list[dict[str, str]]:
    """Compare every managed service with its declared spec and policy; Failed on any drift."""
    params = params or CheckParameters()
    cloud = resolve_cloud(params.project, params.credentials_block)
    rows: list[dict[str, str]] = []
    checked = 0
    for region in params.regions:
        for service in cloud_run.list_managed_services(cloud, region):
            checked += 1
            policy = cloud_run.get_iam_policy(cloud, service.name)
            rows.extend(service_differences(service, policy))
    create_table_artifact(
        table=rows or [{"service": f"{checked} checked", "what": "no drift"}],
        key=ARTIFACT_KEY,
        description=f"Drift of {checked} managed service(s) from their declared spec and policy",
    )
    if rows:
        fields = "; ".join(
            f"{r['service'].rsplit('/', 1)[-1]}: {r['field']} {r['declared']} → {r['live']}"
            for r in rows
        )
        raise DriftError(f"{len(rows)} difference(s) from the declared state: {fields}")
    get_run_logger().info("No drift in %d managed service(s)", checked)
    return rows
