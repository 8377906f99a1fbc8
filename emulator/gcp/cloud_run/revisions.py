"""Cloud Run generations, revisions and their reconciliation (one thread per revision start).

A create or update that changes the template makes a revision `<service>-<00001>-<abc>` and
reconciles it on a thread: the image must be in the emulated Artifact Registry (else the
generation fails with `Image '...' not found.`), then the revision's server is launched
(`serving`). Only then is the service Ready. Every service has an `Ingress` at its `uri` (ID
tokens, the invokers of its IAM policy, max instances x concurrency); the ingress keeps serving
the last ready revision while a new one reconciles or after it failed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from emulator.gcp.artifact_registry import ArtifactRegistryBackend
from emulator.gcp.cloud_run.serving import Launcher, LaunchPlan, RunningBackend, launch_plan
from emulator.gcp.cloud_run.spec import (
    DEFAULT_TIMEOUT_SECONDS,
    FAILED,
    LATEST,
    RECONCILING,
    SUCCEEDED,
    State,
    concurrency,
    etag,
    instance_based_billing,
    max_instances,
    output_spec,
    revision_name,
)
from emulator.gcp.errors import GoogleApiError, invalid_argument
from emulator.gcp.iam.policy import INVOKE, members_with
from emulator.gcp.ingress import Ingress, IngressRules
from emulator.gcp.protojson import utc

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

log = logging.getLogger("emulator.gcp.cloud_run")


@dataclass
class ServiceRecord:
    project: str
    location: str
    service_id: str
    service: run_v2.Service
    policy: policy_pb2.Policy
    outcomes: dict[int, GoogleApiError | None] = field(default_factory=dict)
    ingress: Ingress | None = None
    backend: RunningBackend | None = None
    backend_generation: int = 0
    deleted: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def generation(self) -> int:
        return int(self.service.generation)


class Revisions:
    """Moves services through generations; owns the threads that start and stop servers."""

    def __init__(self, emulator: Emulator, launcher: Launcher) -> None:
        self._emulator = emulator
        self._launcher = launcher
        self._threads: list[threading.Thread] = []
        self.closed = False

    def new_generation(
        self,
        record: ServiceRecord,
        spec: run_v2.Service,
        caller: str | None,
        now: float,
        template_changed: bool,
    ) -> None:
        old = record.service
        new = output_spec(spec)
        for name in (
            "uid", "create_time", "creator", "latest_created_revision", "latest_ready_revision",
            "traffic_statuses", "terminal_condition", "conditions", "observed_generation",
        ):  # fmt: skip
            if name in old:
                setattr(new, name, getattr(old, name))
        generation = int(old.generation) + 1 if old.latest_created_revision else 1
        new.generation = generation
        new.update_time = utc(now)
        new.last_modifier = caller or ""
        if template_changed or not new.latest_created_revision:
            requested = spec.template.revision
            if requested and not requested.startswith(record.service_id + "-"):
                raise invalid_argument(
                    f"template.revision: revision name '{requested}' must begin with the "
                    f"service name '{record.service_id}-'."
                )
            new.latest_created_revision = requested or revision_name(record.service_id, generation)
        assert record.ingress is not None
        new.uri = record.ingress.url
        new.urls = [record.ingress.url]
        record.service = new
        self.set_etag(record)
        if template_changed or record.backend is None:
            self.start(record, generation)
        else:
            self.mark_ready(record, generation)

    def set_etag(self, record: ServiceRecord) -> None:
        s = record.service
        record.service.etag = etag(s.uid, s.generation, s.update_time, s.terminal_condition)

    def _set_condition(self, record: ServiceRecord, state: State, message: str = "") -> None:
        now = utc(self._emulator.clock())
        s = record.service
        s.reconciling = state == RECONCILING
        s.terminal_condition = run_v2.Condition(
            type_="Ready", state=state, message=message, last_transition_time=now
        )
        s.conditions = [
            run_v2.Condition(type_=kind, state=state, message=message, last_transition_time=now)
            for kind in ("RoutesReady", "ConfigurationsReady")
        ]
        self.set_etag(record)

    def start(self, record: ServiceRecord, generation: int) -> None:
        self._set_condition(record, RECONCILING)
        image_uri = record.service.template.containers[0].image
        image = self._emulator.get(ArtifactRegistryBackend).find_image(image_uri)
        if image is None:
            revision = record.service.latest_created_revision
            self._mark_failed(
                record,
                generation,
                GoogleApiError(
                    404,
                    "NOT_FOUND",
                    f"Revision '{revision}' is not ready and cannot serve traffic. "
                    f"Image '{image_uri}' not found.",
                ),
            )
            return
        model = image.metadata.get("model", "")
        plan = launch_plan(
            self._emulator.config, record.service, model, f"{record.service_id}-{generation}"
        )
        self.spawn(self._reconcile, record, generation, plan)

    def _reconcile(self, record: ServiceRecord, generation: int, plan: LaunchPlan) -> None:
        """On a thread: start the revision's server, then (under the lock) make it current."""
        try:
            backend = self._launcher(
                engine=plan.engine, models=plan.models, env=plan.env, log_path=plan.log_path
            )
        except Exception as exc:
            log.warning("cloud run backend for %s failed: %s", record.service_id, exc)
            with self._emulator.lock:
                revision = record.service.latest_created_revision
                self._mark_failed(
                    record,
                    generation,
                    GoogleApiError(
                        500,
                        "FAILED_PRECONDITION",
                        f"Revision '{revision}' is not ready and cannot serve traffic. The "
                        "user-provided container failed to start and listen on the port defined "
                        f"provided by the PORT=8080 environment variable. ({exc})",
                    ),
                )
            return
        old: RunningBackend | None = None
        with self._emulator.lock:
            current = not record.deleted and not self.closed and record.generation == generation
            if current:
                old, record.backend = record.backend, backend
                record.backend_generation = generation
                self.mark_ready(record, generation)
                self._emulator.save()
        if not current:
            backend.stop()
        if old is not None:
            old.stop()

    def mark_ready(self, record: ServiceRecord, generation: int) -> None:
        s = record.service
        s.observed_generation = generation
        s.latest_ready_revision = s.latest_created_revision
        s.traffic_statuses = [run_v2.TrafficTargetStatus(type_=LATEST, percent=100, uri=s.uri)]
        self._set_condition(record, SUCCEEDED)
        record.outcomes[generation] = None
        self.apply_rules(record)
        if record.ingress is not None and record.backend is not None:
            record.ingress.backend_url = record.backend.url
            record.ingress.start()

    def _mark_failed(self, record: ServiceRecord, generation: int, error: GoogleApiError) -> None:
        record.service.observed_generation = generation
        self._set_condition(record, FAILED, error.message)
        record.outcomes[generation] = error
        if record.ingress is not None:
            record.ingress.start()  # keeps serving the last ready revision (503 when none)

    def apply_rules(self, record: ServiceRecord) -> None:
        if record.ingress is None:
            return
        s = record.service
        members = members_with(record.policy, INVOKE)
        timeout = (
            s.template.timeout.total_seconds()
            if "timeout" in s.template
            else DEFAULT_TIMEOUT_SECONDS
        )
        record.ingress.rules = IngressRules(
            audiences=(s.uri, *s.urls, *s.custom_audiences),
            members=members,
            invoker_iam_disabled=s.invoker_iam_disabled,
            max_in_flight=max_instances(s) * concurrency(s.template),
            timeout_seconds=timeout,
            revision=s.latest_ready_revision,
            concurrency=concurrency(s.template),
            instance_based_billing=instance_based_billing(s.template),
        )

    def spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="cloud-run")
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def stop(self, record: ServiceRecord) -> None:
        try:
            if record.ingress is not None:
                record.ingress.stop()
                if record.ingress.instances is not None:
                    record.ingress.instances.stop_all()
            if record.backend is not None:
                record.backend.stop()
        finally:
            record.stopped.set()

    def close(self, records: list[ServiceRecord]) -> None:
        """Stop every service's ingress and server; threads still starting one give up."""
        self.closed = True
        for record in records:
            self.stop(record)
        for thread in self._threads:
            thread.join(timeout=1)
