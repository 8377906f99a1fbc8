"""Cloud Run generations, revisions and traffic, reconciled on threads.

A create or update whose template changed (or that names a new `template.revision`) makes a
revision `<service>-<00001>-<abc>` and reconciles it on a thread: the image must be in the
emulated Artifact Registry (else the generation fails with `Image '...' not found.`), then the
revision's server is launched (`serving`). Only then is the service Ready and its traffic moved
(`traffic`): the service's `Ingress` at its `uri` spreads requests over the revisions by percent,
each tag has an `Ingress` of its own routed to its revision. A revision that no target routes to
is stopped once its requests in flight are answered (Cloud Run scales it to zero); routed again,
it is started again before the generation is ready. A failed generation moves no traffic: the
revisions serving before keep serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from emulator.gcp.artifact_registry import ArtifactRegistryBackend
from emulator.gcp.cloud_run import traffic
from emulator.gcp.cloud_run.revision import RevisionState, new_revision, set_condition
from emulator.gcp.cloud_run.serving import Launcher, LaunchPlan, RunningBackend, launch_plan
from emulator.gcp.cloud_run.spec import (
    DEFAULT_TIMEOUT_SECONDS,
    FAILED,
    RECONCILING,
    SUCCEEDED,
    State,
    concurrency,
    etag,
    instance_based_billing,
    max_instances,
    output_spec,
    revision_name,
    template_key,
)
from emulator.gcp.errors import GoogleApiError, already_exists, invalid_argument
from emulator.gcp.iam.policy import INVOKE, members_with
from emulator.gcp.ingress import Ingress, IngressRules, Target
from emulator.gcp.protojson import utc

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

log = logging.getLogger("emulator.gcp.cloud_run")
DRAIN_GRACE_SECONDS = 0.5  # a request that picked a revision just before traffic moved


@dataclass
class ServiceRecord:
    project: str
    location: str
    service_id: str
    service: run_v2.Service
    policy: policy_pb2.Policy
    outcomes: dict[int, GoogleApiError | None] = field(default_factory=dict)
    honoured_from: dict[str, float] = field(default_factory=dict)  # new invoker -> clock time
    ingress: Ingress | None = None
    tags: dict[str, Ingress] = field(default_factory=dict)
    revisions: dict[str, RevisionState] = field(default_factory=dict)
    deleted: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def generation(self) -> int:
        return int(self.service.generation)

    def ingresses(self) -> list[Ingress]:
        return [i for i in (self.ingress, *self.tags.values()) if i is not None]


class Revisions:
    """Moves services through generations; owns the threads that start and stop servers."""

    def __init__(
        self, emulator: Emulator, launcher: Launcher, new_ingress: Callable[[int], Ingress]
    ) -> None:
        self._emulator = emulator
        self._launcher = launcher
        self._new_ingress = new_ingress
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
        latest, creating = self._latest_revision(record, spec, generation, template_changed)
        traffic.check_traffic(new.traffic, record.revisions, latest)
        new.latest_created_revision = latest
        assert record.ingress is not None
        new.uri = record.ingress.url
        new.urls = [record.ingress.url]
        record.service = new
        if creating:
            record.revisions[latest] = new_revision(new, latest, caller, now)
        self.set_etag(record)
        self.start(record, generation, latest if creating else None)

    def _latest_revision(
        self, record: ServiceRecord, spec: run_v2.Service, generation: int, changed: bool
    ) -> tuple[str, bool]:
        """The revision the template is after this update, and whether the update creates it.
        A named revision that exists must be that template ("Revision named ... with different
        configuration already exists", Cloud Run's conflict as gcloud reports it)."""
        requested = spec.template.revision
        if requested and not requested.startswith(record.service_id + "-"):
            raise invalid_argument(
                f"template.revision: revision name '{requested}' must begin with the "
                f"service name '{record.service_id}-'."
            )
        existing = record.revisions.get(requested) if requested else None
        if existing is not None:
            if template_key(existing.template) != template_key(spec.template):
                raise already_exists(
                    f"Revision named '{requested}' with different configuration already exists."
                )
            return requested, False
        if requested or changed or not record.service.latest_created_revision:
            return requested or revision_name(record.service_id, generation), True
        return str(record.service.latest_created_revision), False

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

    def _wanted(self, record: ServiceRecord, creating: str | None) -> set[str]:
        """The revisions this generation serves from once it is ready."""
        latest = creating or record.service.latest_ready_revision
        wanted = traffic.routed(traffic.resolve(record.service.traffic, latest))
        return wanted | ({creating} if creating else set())

    def start(self, record: ServiceRecord, generation: int, creating: str | None) -> None:
        """Reconcile `generation`: start the servers it needs, then move its traffic."""
        self._set_condition(record, RECONCILING)
        plans: dict[str, LaunchPlan] = {}
        registry = self._emulator.get(ArtifactRegistryBackend)
        for name in sorted(self._wanted(record, creating)):
            state = record.revisions.get(name)
            if state is None or state.backend is not None:
                continue
            image_uri = state.template.containers[0].image
            image = registry.find_image(image_uri)
            if image is None:
                message = (
                    f"Revision '{name}' is not ready and cannot serve traffic. "
                    f"Image '{image_uri}' not found."
                )
                error = GoogleApiError(404, "NOT_FOUND", message)
                self._mark_failed(record, generation, error, name)
                return
            serving = run_v2.Service(template=state.template, scaling=record.service.scaling)
            plans[name] = launch_plan(
                self._emulator.config, serving, image.metadata, f"{name}-{generation}"
            )
        if not plans:
            self.mark_ready(record, generation)
            return
        self.spawn(self._reconcile, record, generation, plans)

    def _reconcile(
        self, record: ServiceRecord, generation: int, plans: dict[str, LaunchPlan]
    ) -> None:
        """On a thread: start the revisions' servers, then (under the lock) move traffic."""
        started: dict[str, RunningBackend] = {}
        for name, plan in plans.items():
            try:
                started[name] = self._launcher(
                    engine=plan.engine, models=plan.models, env=plan.env, log_path=plan.log_path
                )
            except Exception as exc:
                log.warning("cloud run revision %s failed to start: %s", name, exc)
                for backend in started.values():
                    backend.stop()
                with self._emulator.lock:
                    self._mark_failed(record, generation, _start_failure(name, exc), name)
                return
        with self._emulator.lock:
            current = not record.deleted and not self.closed and record.generation == generation
            if current:
                for name, backend in started.items():
                    record.revisions[name].backend = backend
                self.mark_ready(record, generation)
                self._emulator.save()
        if not current:
            for backend in started.values():
                backend.stop()

    def mark_ready(self, record: ServiceRecord, generation: int) -> None:
        """The generation's servers run: its latest revision is ready (unless it failed before:
        then only the traffic moves) and the traffic goes where the generation says."""
        s = record.service
        latest = record.revisions.get(s.latest_created_revision)
        if latest is not None and latest.backend is not None and not latest.ready:
            set_condition(latest, SUCCEEDED, self._emulator.clock())
        s.observed_generation = generation
        if latest is not None and latest.ready:
            s.latest_ready_revision = s.latest_created_revision
        resolved = traffic.resolve(s.traffic, s.latest_ready_revision)
        self._route(record, resolved)
        tag_urls = {tag: ingress.url for tag, ingress in record.tags.items()}
        s.traffic_statuses = traffic.statuses(resolved, tag_urls)
        if latest is not None and latest.failed:
            self._set_condition(record, FAILED, latest.revision.conditions[0].message)
        else:
            self._set_condition(record, SUCCEEDED)
        record.outcomes[generation] = None
        self.apply_rules(record)

    def _route(self, record: ServiceRecord, resolved: list[traffic.Resolved]) -> None:
        """Point the service's ingress and one ingress per tag at the revisions' servers; stop
        the servers no target routes to any more."""

        def target(revision: str, percent: int) -> Target | None:
            state = record.revisions.get(revision)
            if state is None or state.backend is None:
                return None
            return Target(revision, percent, state.backend.url)

        split = [target(r.revision, r.percent) for r in resolved if r.percent]
        assert record.ingress is not None
        record.ingress.route_to(tuple(t for t in split if t is not None))
        record.ingress.start()
        tagged = {r.tag: r.revision for r in resolved if r.tag}
        for tag in list(record.tags):
            if tag not in tagged:
                self.spawn(record.tags.pop(tag).stop)
        for tag, revision in tagged.items():
            ingress = record.tags.get(tag) or self.tag_ingress(record, tag, 0)
            only = target(revision, 100)
            ingress.route_to((only,) if only is not None else ())
            ingress.start()
        keep = traffic.routed(resolved)
        for state in record.revisions.values():
            if state.name not in keep and state.backend is not None:
                backend, state.backend = state.backend, None
                self.spawn(self._drain_and_stop, record, state.name, backend)

    def tag_ingress(self, record: ServiceRecord, tag: str, port: int) -> Ingress:
        """A tag's URL; what it answers counts with the service's (request_count by revision)."""
        ingress = record.tags[tag] = self._new_ingress(port)
        if record.ingress is not None:
            ingress.answered = record.ingress.answered
        return ingress

    def _drain_and_stop(
        self, record: ServiceRecord, revision: str, backend: RunningBackend
    ) -> None:
        """Stop a server no route leads to once the requests it is answering are done."""
        time.sleep(DRAIN_GRACE_SECONDS)
        timeout = record.ingress.rules.timeout_seconds if record.ingress is not None else 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            if not any(i.in_flight_by_revision[revision] for i in record.ingresses()):
                break
            time.sleep(0.05)
        backend.stop()

    def _mark_failed(
        self,
        record: ServiceRecord,
        generation: int,
        error: GoogleApiError,
        revision: str | None = None,
    ) -> None:
        s = record.service
        failed = record.revisions.get(revision or s.latest_created_revision)
        if failed is not None and not failed.ready:
            set_condition(failed, FAILED, self._emulator.clock(), error.message)
        s.observed_generation = generation
        self._set_condition(record, FAILED, error.message)
        record.outcomes[generation] = error
        for ingress in record.ingresses():
            ingress.start()  # keeps serving the revisions that served before (503 when none)

    def apply_rules(self, record: ServiceRecord) -> None:
        s = record.service
        members = members_with(record.policy, INVOKE)
        timeout = (
            s.template.timeout.total_seconds()
            if "timeout" in s.template
            else DEFAULT_TIMEOUT_SECONDS
        )
        for ingress in record.ingresses():
            ingress.rules = IngressRules(
                # A token for the service URL is good on every tag URL; a tag URL is good there.
                audiences=(s.uri, *s.urls, *s.custom_audiences, ingress.url),
                members=members,
                invoker_iam_disabled=s.invoker_iam_disabled,
                max_in_flight=max_instances(s) * concurrency(s.template),
                timeout_seconds=timeout,
                revision=s.latest_ready_revision,
                concurrency=concurrency(s.template),
                instance_based_billing=instance_based_billing(s.template),
                honoured_from=dict(record.honoured_from),
                clock=self._emulator.clock,
            )

    def delete_revision(self, record: ServiceRecord, name: str) -> RevisionState:
        """Forget a revision and stop its server; the caller checked it may go."""
        state = record.revisions.pop(name)
        state.revision.delete_time = utc(self._emulator.clock())
        if state.backend is not None:
            backend, state.backend = state.backend, None
            self.spawn(backend.stop)
        return state

    def spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="cloud-run")
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def stop(self, record: ServiceRecord) -> None:
        try:
            for ingress in record.ingresses():
                ingress.stop()
            if record.ingress is not None and record.ingress.instances is not None:
                record.ingress.instances.stop_all()  # tag URLs share the service's instances
            _stop_all(s.backend for s in record.revisions.values())
        finally:
            record.stopped.set()

    def close(self, records: list[ServiceRecord]) -> None:
        """Stop every service's ingresses and servers; threads still starting one give up."""
        self.closed = True
        for record in records:
            self.stop(record)
        for thread in self._threads:
            thread.join(timeout=1)


def _stop_all(backends: Iterable[RunningBackend | None]) -> None:
    for backend in backends:
        if backend is not None:
            backend.stop()


def _start_failure(revision: str, exc: Exception) -> GoogleApiError:
    return GoogleApiError(
        500,
        "FAILED_PRECONDITION",
        f"Revision '{revision}' is not ready and cannot serve traffic. The user-provided "
        "container failed to start and listen on the port defined provided by the PORT=8080 "
        f"environment variable. ({exc})",
    )
