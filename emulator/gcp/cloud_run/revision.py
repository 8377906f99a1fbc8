"""One Cloud Run revision: the `run_v2.Revision` the Revisions API serves, the template it was
made from and, while it can receive requests, its running server. Pure but for that handle.

Fields as the Cloud Run Admin API v2 reference gives a Revision (discovery document run.v2,
`GoogleCloudRunV2Revision`): the template's containers, scaling, concurrency, timeout, account,
node selector, labels and annotations; `service` the parent's full name; a `Ready` condition.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from google.cloud import run_v2

from emulator.gcp.cloud_run.serving import RunningBackend
from emulator.gcp.cloud_run.spec import FAILED, RECONCILING, SUCCEEDED, State, etag
from emulator.gcp.protojson import utc


@dataclass
class RevisionState:
    revision: run_v2.Revision
    template: run_v2.RevisionTemplate
    backend: RunningBackend | None = None

    @property
    def name(self) -> str:
        return str(self.revision.name).rsplit("/", 1)[-1]

    @property
    def ready(self) -> bool:
        return any(c.type_ == "Ready" and c.state == SUCCEEDED for c in self.revision.conditions)

    @property
    def failed(self) -> bool:
        return any(c.type_ == "Ready" and c.state == FAILED for c in self.revision.conditions)


def new_revision(
    service: run_v2.Service, name: str, caller: str | None, now: float
) -> RevisionState:
    """The revision `service.template` makes, reconciling."""
    t = service.template
    revision = run_v2.Revision(
        name=f"{service.name}/revisions/{name}",
        uid=str(uuid.uuid4()),
        generation=1,
        labels=dict(t.labels),
        annotations=dict(t.annotations),
        create_time=utc(now),
        update_time=utc(now),
        launch_stage=service.launch_stage,
        service=service.name,
        scaling=t.scaling,
        max_instance_request_concurrency=t.max_instance_request_concurrency,
        timeout=t.timeout,
        service_account=t.service_account,
        containers=list(t.containers),
        volumes=list(t.volumes),
        execution_environment=t.execution_environment,
        node_selector=t.node_selector,
        gpu_zonal_redundancy_disabled=t.gpu_zonal_redundancy_disabled,
        creator=caller or "",
    )
    template = run_v2.RevisionTemplate.deserialize(run_v2.RevisionTemplate.serialize(t))
    template.revision = name
    state = RevisionState(revision, template)
    set_condition(state, RECONCILING, now)
    return state


def set_condition(state: RevisionState, condition: State, now: float, message: str = "") -> None:
    r = state.revision
    r.reconciling = condition == RECONCILING
    r.observed_generation = 1
    r.conditions = [
        run_v2.Condition(
            type_="Ready", state=condition, message=message, last_transition_time=utc(now)
        )
    ]
    r.update_time = utc(now)
    r.etag = etag(r.uid, r.update_time, condition)
