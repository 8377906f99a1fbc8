"""Cloud Run state: services by (project, location, id), with their IAM policies. Knows nothing
of HTTP; every mutating method returns its long-running operation.

Regions are independent. Deleting a service stops its server and ingress; a restored state dir
restarts them (`revisions`).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.cloud import run_v2
from google.iam.v1 import policy_pb2
from google.protobuf import json_format

from emulator.gcp.cloud_quotas import CloudQuotasBackend
from emulator.gcp.cloud_run.instances import Instance, InstancePool, Timing
from emulator.gcp.cloud_run.propagation import check_act_as, note_invokers
from emulator.gcp.cloud_run.revision import RevisionState
from emulator.gcp.cloud_run.revisions import Revisions, ServiceRecord
from emulator.gcp.cloud_run.serving import Launcher, launch_ollama
from emulator.gcp.cloud_run.spec import (
    QUOTA_CPU,
    QUOTA_MEMORY,
    gpu_of,
    max_instances,
    merge_update,
    output_spec,
    parse_cpu,
    parse_memory,
    quota_message,
    spec_of,
    template_key,
    total_cpu_quota_message,
    validate_service,
    validate_service_id,
)
from emulator.gcp.errors import (
    GoogleApiError,
    failed_precondition,
    invalid_argument,
    not_found,
    unimplemented,
)
from emulator.gcp.iam.policy import INVOKE, granted_permissions, members_with, replace_policy
from emulator.gcp.ingress import OUTAGES, Ingress, IngressRules
from emulator.gcp.operations import Outcome, located_operation_name
from emulator.gcp.protojson import message_to_json, parse_message, utc
from emulator.gcp.resource_manager import ResourceManagerBackend
from emulator.gcp.routing import lenient_page
from emulator.gcp.service_usage import ServiceUsageBackend

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

ServiceKey = tuple[str, str, str]


@dataclass(frozen=True)
class AnsweredRequests:
    """What one revision's ingress answered, (time, HTTP status) per request: the raw data of
    Cloud Monitoring's run.googleapis.com/request_count (emulator/gcp/monitoring)."""

    location: str
    service: str
    revision: str
    requests: Sequence[tuple[float, int]]


@dataclass(frozen=True)
class ServiceInstances:
    """One service's instances at `now` (emulator clock): the data of Cloud Monitoring's
    run.googleapis.com/container/billable_instance_time (emulator/gcp/monitoring)."""

    project: str
    location: str
    service: str
    now: float
    instances: list[Instance]


class CloudRunBackend:
    """Services by (project, location, id). Knows nothing of HTTP."""

    def __init__(self, emulator: Emulator, launcher: Launcher | None = None) -> None:
        self._emulator = emulator
        self._revisions = Revisions(emulator, launcher or launch_ollama, self._new_ingress)
        self._services: dict[ServiceKey, ServiceRecord] = {}
        self._deleted: list[tuple[ServiceKey, ServiceRecord]] = []  # their billed time stays

    # -- helpers -------------------------------------------------------------------------------

    def _project(self, project: str) -> str:
        return self._emulator.get(ServiceUsageBackend).resolve_project(project)

    def _key(self, project: str, location: str, service_id: str) -> ServiceKey:
        return (self._project(project), location, service_id)

    def _record(self, project: str, location: str, service_id: str) -> ServiceRecord:
        record = self._services.get(self._key(project, location, service_id))
        if record is None:
            raise not_found(
                f"Resource '{service_id}' of kind 'SERVICE' in region '{location}' in project "
                f"'{project}' does not exist."
            )
        return record

    def _admit(self, spec: run_v2.Service, project: str, location: str) -> None:
        """Google's checks on a create or update: acting as the runtime account, the spec, then
        the GPU quota."""
        check_act_as(self._emulator, project, spec.template.service_account)
        validate_service(spec, location)
        self._check_quota(project, location, spec)

    def _check_quota(self, project: str, location: str, service: run_v2.Service) -> None:
        """Admission against the Cloud Quotas values in force (emulator/gcp/cloud_quotas.py)."""
        quotas = self._emulator.get(CloudQuotasBackend)
        gpu = gpu_of(service.template)
        if gpu is not None:
            used = 0
            for (p, loc, sid), other in self._services.items():
                other_gpu = gpu_of(other.service.template)
                if (p, loc) != (project, location) or sid == service.name.rsplit("/", 1)[-1]:
                    continue
                if other_gpu is not None and other_gpu.quota_id == gpu.quota_id:
                    used += max_instances(other.service) * other_gpu.count
            allowed = max(0, quotas.limit(project, location, gpu.quota_id) - used)
            requested = max_instances(service) * gpu.count
            if requested > allowed:
                raise invalid_argument(quota_message(requested, allowed, gpu.quota_id))
        # CPU and memory: this service's max instances × its limits against the whole quota, as
        # Google's messages report it ("requested: 32000 allowed: 20000" for 4 × 8 vCPU).
        limits = (
            service.template.containers[0].resources.limits if service.template.containers else {}
        )
        per_instance = {
            QUOTA_CPU: int(parse_cpu(limits.get("cpu", "1")) * 1000),
            QUOTA_MEMORY: parse_memory(limits.get("memory", "512Mi")),
        }
        count = max_instances(service)
        violated = {
            q: (count * amount, quotas.limit(project, location, q))
            for q, amount in per_instance.items()
            if amount and count * amount > quotas.limit(project, location, q)
        }
        if violated:
            fit = min(allowed // per_instance[q] for q, (_, allowed) in violated.items())
            raise invalid_argument(total_cpu_quota_message(fit, violated))

    def _new_ingress(self, port: int = 0) -> Ingress:
        pool = InstancePool(self._emulator.clock, self._timing)
        verify = self._emulator.signer.verify_id_token
        ingress = Ingress(
            verify, IngressRules(), port=port, clock=self._emulator.clock, instances=pool
        )
        ingress.bind()
        return ingress

    def _timing(self) -> Timing:
        config = self._emulator.config  # runtime settings: read at each use
        return Timing(config.cloud_run_cold_start_seconds, config.cloud_run_idle_tail_seconds)

    def service_instances(self, project: str | None = None) -> list[ServiceInstances]:
        """Every service's instances (of one project, or all; deleted services' too), idle ones
        scaled in."""
        found = []
        for (p, location, service_id), record in [*self._deleted, *self._services.items()]:
            pool = record.ingress.instances if record.ingress is not None else None
            if pool is None or (project is not None and p != self._project(project)):
                continue
            now, instances = pool.snapshot()
            found.append(ServiceInstances(p, location, service_id, now, instances))
        return found

    # -- API -----------------------------------------------------------------------------------

    def create_service(
        self,
        project: str,
        location: str,
        service_id: str,
        body: Mapping[str, Any],
        caller: str | None,
        validate_only: bool = False,
    ) -> dict[str, Any]:
        validate_service_id(service_id)
        spec = parse_message(run_v2.Service, dict(body))
        key = self._key(project, location, service_id)
        if key in self._services:
            raise GoogleApiError(409, "ALREADY_EXISTS", f"Resource '{service_id}' already exists.")
        spec.name = f"projects/{key[0]}/locations/{location}/services/{service_id}"
        self._admit(spec, key[0], location)
        if validate_only:
            return self._validated_operation(spec)
        now = self._emulator.clock()
        service = output_spec(spec)
        service.uid = str(uuid.uuid4())
        service.create_time = utc(now)
        service.creator = caller or ""
        empty_policy = policy_pb2.Policy(version=1, etag=base64.b64decode("ACAB"))
        record = ServiceRecord(key[0], location, service_id, service, empty_policy)
        self._services[key] = record
        record.ingress = self._new_ingress()
        self._revisions.new_generation(record, spec, caller, now, template_changed=True)
        return self._operation(record, record.generation)

    def get_service(self, project: str, location: str, service_id: str) -> run_v2.Service:
        return self._record(project, location, service_id).service

    def list_services(
        self, project: str, location: str, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        # The location "cannot be the "-" wildcard" (run.v2.json, ListServicesRequest.parent);
        # Cloud Run v2's answer to `locations/-`: googleapis/google-cloud-go#7197.
        if location == "-":
            raise unimplemented("Operation is not implemented, or supported, or enabled.")
        p = self._project(project)
        records = sorted(
            (r for (rp, loc, _), r in self._services.items() if rp == p and loc == location),
            key=lambda r: r.service_id,
        )
        page, token = lenient_page(records, page_size, page_token)
        out: dict[str, Any] = {"services": [message_to_json(r.service) for r in page]}
        if token:
            out["nextPageToken"] = token
        return out

    def update_service(
        self,
        project: str,
        location: str,
        service_id: str,
        body: Mapping[str, Any],
        caller: str | None,
        *,
        allow_missing: bool = False,
        update_mask: Sequence[str] = (),
        validate_only: bool = False,
    ) -> dict[str, Any]:
        key = self._key(project, location, service_id)
        if key not in self._services:
            if not allow_missing:
                self._record(project, location, service_id)  # raises NotFound
            return self.create_service(project, location, service_id, body, caller, validate_only)
        record = self._services[key]
        spec = parse_message(run_v2.Service, dict(body))
        if spec.etag and spec.etag != record.service.etag:
            raise GoogleApiError(
                409, "ABORTED", f"etag mismatch: the service '{service_id}' has changed."
            )
        if update_mask:
            spec = merge_update(spec_of(record.service), spec, update_mask)
        spec.name = record.service.name
        self._admit(spec, key[0], location)
        if validate_only:
            return self._validated_operation(spec)
        current = spec_of(record.service)
        template_changed = template_key(current.template) != template_key(spec.template)
        if run_v2.Service.pb(current) == run_v2.Service.pb(spec_of(output_spec(spec))):
            return self._operation(record, record.generation)  # nothing changed: no new generation
        now = self._emulator.clock()
        self._revisions.new_generation(record, spec, caller, now, template_changed)
        return self._operation(record, record.generation)

    def delete_service(self, project: str, location: str, service_id: str) -> dict[str, Any]:
        record = self._record(project, location, service_id)
        del self._services[self._key(project, location, service_id)]
        self._deleted.append((self._key(project, location, service_id), record))
        record.deleted = True
        now = self._emulator.clock()
        record.service.delete_time = utc(now)
        record.service.reconciling = True
        snapshot = run_v2.Service.wrap(run_v2.Service.pb(record.service))
        self._revisions.spawn(self._revisions.stop, record)

        def resolve() -> Outcome | None:
            return (snapshot, None) if record.stopped.is_set() else None

        name = located_operation_name(project, location)
        return self._emulator.start_operation(name, snapshot, resolve)

    # -- revisions (Cloud Run Admin API v2 projects.locations.services.revisions) ------------

    def _revision(
        self, project: str, location: str, service_id: str, revision: str
    ) -> tuple[ServiceRecord, RevisionState]:
        record = self._record(project, location, service_id)
        state = record.revisions.get(revision)
        if state is None:
            raise not_found(
                f"Resource '{revision}' of kind 'REVISION' in region '{location}' in project "
                f"'{project}' does not exist."
            )
        return record, state

    def get_revision(
        self, project: str, location: str, service_id: str, revision: str
    ) -> run_v2.Revision:
        return self._revision(project, location, service_id, revision)[1].revision

    def list_revisions(
        self, project: str, location: str, service_id: str, page_size: int, page_token: str
    ) -> dict[str, Any]:
        """Newest first; `-` for the service lists every service's (the API's own wildcard)."""
        if service_id == "-":
            p = self._project(project)
            records = [
                r for (rp, loc, _), r in self._services.items() if (rp, loc) == (p, location)
            ]
        else:
            records = [self._record(project, location, service_id)]
        states = [v for r in records for v in r.revisions.values()]
        states.sort(key=lambda v: (v.revision.create_time, v.name), reverse=True)
        page, token = lenient_page(states, page_size, page_token)
        out: dict[str, Any] = {"revisions": [message_to_json(v.revision) for v in page]}
        if token:
            out["nextPageToken"] = token
        return out

    def delete_revision(
        self,
        project: str,
        location: str,
        service_id: str,
        revision: str,
        *,
        etag: str = "",
        validate_only: bool = False,
    ) -> dict[str, Any]:
        """Cloud Run refuses to delete a revision that can receive requests (some traffic or a
        tag) or is the service's latest (https://cloud.google.com/run/docs/managing/revisions:
        only revisions that do not serve traffic are deleted); FAILED_PRECONDITION."""
        record, state = self._revision(project, location, service_id, revision)
        if etag and etag != state.revision.etag:
            raise GoogleApiError(
                409, "ABORTED", f"etag mismatch: the revision '{revision}' has changed."
            )
        routes = [t for t in record.service.traffic_statuses if t.revision == revision]
        if any(t.percent or t.tag for t in routes):
            raise failed_precondition(
                f"Revision '{revision}' cannot be deleted because it is serving traffic or is "
                "referenced by a traffic tag."
            )
        if revision == record.service.latest_created_revision:
            raise failed_precondition(
                f"Revision '{revision}' cannot be deleted because it is the latest revision of "
                f"service '{service_id}'."
            )
        name = located_operation_name(project, location)
        if validate_only:
            return self._emulator.operations.create_done(name, state.revision, state.revision)
        deleted = self._revisions.delete_revision(record, revision).revision
        return self._emulator.start_operation(name, deleted, lambda: (deleted, None))

    def answered_requests(self, project: str) -> list[AnsweredRequests]:
        """What each live service's URLs (the service's and its tags') answered, per revision
        (for Cloud Monitoring's request_count)."""
        p = self._project(project)
        found = []
        for (rp, loc, sid), record in self._services.items():
            if rp != p:
                continue
            by_revision: dict[str, list[tuple[float, int]]] = {}
            if record.ingress is None:
                continue
            for at, status, revision in list(record.ingress.answered):  # tag URLs' too
                by_revision.setdefault(revision, []).append((at, status))
            found += [
                AnsweredRequests(loc, sid, rev, sorted(rs)) for rev, rs in by_revision.items()
            ]
        return found

    def get_iam_policy(self, project: str, location: str, service_id: str) -> policy_pb2.Policy:
        return self._record(project, location, service_id).policy

    def set_iam_policy(
        self, project: str, location: str, service_id: str, policy: policy_pb2.Policy
    ) -> policy_pb2.Policy:
        record = self._record(project, location, service_id)
        before = members_with(record.policy, INVOKE)
        record.policy = replace_policy(record.policy, policy)
        after = members_with(record.policy, INVOKE)
        note_invokers(self._emulator, record.honoured_from, before, after)
        self._revisions.apply_rules(record)
        return record.policy

    def test_iam_permissions(
        self,
        project: str,
        location: str,
        service_id: str,
        caller: str | None,
        permissions: Iterable[str],
    ) -> list[str]:
        """The permissions `caller` holds on the service (in the order asked): what the service's
        policy grants, plus what the caller holds on the project, which IAM inherits (the
        emulated Resource Manager: every authenticated identity owns the emulated project,
        less the permissions a test denies)."""
        record = self._record(project, location, service_id)
        asked = list(dict.fromkeys(permissions))
        granted = set(granted_permissions(record.policy, caller, asked))
        if caller is not None:
            manager = self._emulator.get(ResourceManagerBackend)
            granted.update(manager.test_permissions(record.project, caller, asked))
        return [p for p in asked if p in granted]

    # -- control (tests and benchmarks) --------------------------------------------------------

    def set_outage(self, project: str, location: str, service_id: str, outage: Any) -> str | None:
        """Play the service dying (``emulator.gcp.ingress.Ingress.set_outage``), or recovering."""
        if outage is not None and outage not in OUTAGES:
            raise invalid_argument(
                f"outage must be one of {', '.join(OUTAGES)} or null, got {outage!r}"
            )
        record = self._record(project, location, service_id)
        for ingress in record.ingresses():  # the service URL and its tag URLs
            ingress.set_outage(outage)
        return outage

    # -- operations ----------------------------------------------------------------------------

    def _operation(self, record: ServiceRecord, generation: int) -> dict[str, Any]:
        """Done once `generation` (or a later one) is ready or failed."""

        def metadata() -> run_v2.Service:
            return record.service

        def resolve() -> Outcome | None:
            done = [g for g in record.outcomes if g >= generation]
            if not done:
                return None
            error = record.outcomes[min(done)]
            return (record.service, None) if error is None else (None, error)

        name = located_operation_name(record.project, record.location)
        return self._emulator.start_operation(name, metadata, resolve)

    def _validated_operation(self, spec: run_v2.Service) -> dict[str, Any]:
        project, location = spec.name.split("/")[1], spec.name.split("/")[3]
        name = located_operation_name(project, location)
        return self._emulator.operations.create_done(name, spec, spec)

    # -- registry protocol ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "services": [
                {
                    "project": r.project,
                    "location": r.location,
                    "service_id": r.service_id,
                    "service": message_to_json(r.service),
                    "policy": json_format.MessageToDict(r.policy),
                    "honoured_from": r.honoured_from,
                    "port": r.ingress.port if r.ingress is not None else 0,
                    "tag_ports": {tag: i.port for tag, i in r.tags.items()},
                    "revisions": [
                        {
                            "revision": message_to_json(v.revision),
                            "template": message_to_json(v.template),
                        }
                        for v in r.revisions.values()
                    ],
                }
                for r in self._services.values()
            ]
        }

    def restore(self, state: dict[str, Any]) -> None:
        for data in state.get("services", []):
            service = parse_message(run_v2.Service, data["service"])
            policy = json_format.ParseDict(data.get("policy", {}), policy_pb2.Policy())
            record = ServiceRecord(
                data["project"], data["location"], data["service_id"], service, policy
            )
            record.honoured_from = {m: float(t) for m, t in data.get("honoured_from", {}).items()}
            record.ingress = self._new_ingress(data.get("port", 0))
            if record.ingress.url != service.uri:
                service.uri = record.ingress.url
                service.urls = [record.ingress.url]
            for tag, port in data.get("tag_ports", {}).items():
                self._revisions.tag_ingress(record, tag, port)
            for saved in data.get("revisions", []):
                restored = RevisionState(
                    parse_message(run_v2.Revision, saved["revision"]),
                    parse_message(run_v2.RevisionTemplate, saved["template"]),
                )
                record.revisions[restored.name] = restored
            self._services[(record.project, record.location, record.service_id)] = record
            if service.latest_ready_revision or service.reconciling:
                self._revisions.start(record, record.generation, None)

    def close(self) -> None:
        self._revisions.close(list(self._services.values()))
