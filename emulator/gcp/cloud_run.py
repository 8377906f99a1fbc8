"""Cloud Run Admin API v2: services (+ IAM policy), really served when ready.

Validation is Google's, as INVALID_ARGUMENT on the call: the service id, GPU services (a known
accelerator, one GPU, >= 4 CPU and >= 16 GiB, CPU always allocated), request concurrency
1..1000, max instances 0..1000, request timeout <= 3600 s, and a GPU quota per project, region
and pool (with / without zonal redundancy) and CPU / memory allocation quotas, with Google's
messages, against the values the emulated Cloud Quotas API serves (default GPU: `config.gpu_quota`).
Regions are independent.

A create or update that changes the template makes a revision `<service>-<00001>-<abc>` and
reconciles it on a thread: the image must be in the emulated Artifact Registry (else the LRO
fails with `Image '...' not found.`), then an `emulator.ollama` server is started for the model
baked into the image (the configured engine; the llama engine serves it with the stand-in model
and must have loaded it). Only then is the service Ready and the LRO done. Every service has an
`Ingress` at its `uri` (ID tokens, `roles/run.invoker`, max instances × concurrency).
Deleting a service stops its backend and ingress; a restored state dir restarts them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import string
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from google.api import launch_stage_pb2
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import duration_pb2, field_mask_pb2, json_format

from emulator.gcp.core import (
    Call,
    GoogleApiError,
    Outcome,
    Route,
    invalid_argument,
    message_to_json,
    not_found,
    parse_message,
    project_number,
)
from emulator.gcp.ingress import INVOKER_ROLES, Ingress, IngressRules

if TYPE_CHECKING:
    from emulator.gcp.core import Emulator

log = logging.getLogger("emulator.gcp.cloud_run")

SERVICE = "run.googleapis.com"
SERVICE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
GPU_LIMIT = "nvidia.com/gpu"
ACCELERATORS = ("nvidia-l4",)
DEFAULT_MAX_INSTANCES = 100
MAX_INSTANCES_LIMIT = 1000
DEFAULT_CONCURRENCY = 80
DEFAULT_TIMEOUT_SECONDS = 300
MAX_TIMEOUT_SECONDS = 3600
QUOTA_ZONAL = "NvidiaL4GpuAllocPerProjectRegion"
QUOTA_NO_ZONAL = "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
QUOTA_CPU = "CpuAllocPerProjectRegion"  # milli-vCPU
QUOTA_MEMORY = "MemAllocPerProjectRegion"  # bytes
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
State = run_v2.Condition.State
SUCCEEDED, FAILED, RECONCILING = State(4), State(3), State(2)

_MEMORY_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip
GIB = 2**30


# ---------------------------------------------------------------------------------------------
# Pure validation.


def parse_cpu(text: str) -> float:
    """A Kubernetes CPU quantity ("8", "4000m", "0.5") in CPUs."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", text.strip())
    if m is None:
        raise invalid_argument(f"Invalid value specified for cpu: {text!r}.")
    value = float(m[1])
    return value / 1000 if m[2] else value


def parse_memory(text: str) -> int:
    """A Kubernetes memory quantity ("32Gi", "512Mi", "16G") in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(k|M|G|T|Ki|Mi|Gi|Ti)?", text.strip())
    if m is None:
        raise invalid_argument(f"Invalid value specified for memory: {text!r}.")
    return int(float(m[1]) * _MEMORY_UNITS[m[2] or ""])


def validate_service_id(service_id: str) -> None:
    if not service_id:
        raise invalid_argument("service_id must be specified.")
    if not SERVICE_ID.match(service_id):
        raise invalid_argument(
            f"Invalid value specified for service_id: {service_id!r}. Service names must use "
            "only lowercase alphanumeric characters and dashes, begin with a letter, cannot end "
            "with a dash, and must be at most 49 characters long."
        )


@dataclass(frozen=True)
class Gpu:
    count: int
    accelerator: str
    zonal_redundancy: bool

    @property
    def quota_id(self) -> str:
        return QUOTA_ZONAL if self.zonal_redundancy else QUOTA_NO_ZONAL


def gpu_of(template: run_v2.RevisionTemplate) -> Gpu | None:
    limits = template.containers[0].resources.limits if template.containers else {}
    accelerator = template.node_selector.accelerator
    if GPU_LIMIT not in limits and not accelerator:
        return None
    zonal = not (
        "gpu_zonal_redundancy_disabled" in template and template.gpu_zonal_redundancy_disabled
    )
    count_text = limits.get(GPU_LIMIT, "")
    count = int(count_text) if count_text.isdigit() else -1
    return Gpu(count, accelerator, zonal)


def max_instances(service: run_v2.Service) -> int:
    """The effective max instance count (service-level scaling wins over the template's)."""
    return (
        service.scaling.max_instance_count
        or service.template.scaling.max_instance_count
        or DEFAULT_MAX_INSTANCES
    )


def concurrency(template: run_v2.RevisionTemplate) -> int:
    return template.max_instance_request_concurrency or DEFAULT_CONCURRENCY


def validate_service(service: run_v2.Service, location: str) -> None:
    """Google's admission checks on a Service spec (INVALID_ARGUMENT)."""
    t = service.template
    if not t.containers:
        raise invalid_argument("template.containers: at least one container must be specified.")
    for i, container in enumerate(t.containers):
        if not container.image:
            raise invalid_argument(f"template.containers[{i}].image: must be specified.")
        for env in container.env:
            if "value_source" in env:
                raise GoogleApiError(
                    501, "UNIMPLEMENTED", "emulator.gcp does not implement secret env values"
                )
    concurrency_value = t.max_instance_request_concurrency
    if not 0 <= concurrency_value <= 1000:
        raise invalid_argument(
            "template.max_instance_request_concurrency: must be between 1 and 1000, got "
            f"{concurrency_value}."
        )
    for where, scaling in (("template.scaling", t.scaling), ("scaling", service.scaling)):
        low, high = scaling.min_instance_count, scaling.max_instance_count
        if not 0 <= high <= MAX_INSTANCES_LIMIT:
            raise invalid_argument(
                f"{where}.max_instance_count: must be between 0 and {MAX_INSTANCES_LIMIT}, "
                f"got {high}."
            )
        if low < 0 or (high and low > high):
            raise invalid_argument(
                f"{where}.min_instance_count ({low}) must be between 0 and max_instance_count "
                f"({high})."
            )
    if "timeout" in t:
        seconds = t.timeout.total_seconds()
        if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
            raise invalid_argument(
                f"template.timeout: must be between 1s and {MAX_TIMEOUT_SECONDS}s, got "
                f"{seconds:g}s."
            )
    resources = t.containers[0].resources
    cpu = parse_cpu(resources.limits.get("cpu", "1"))
    memory = parse_memory(resources.limits.get("memory", "512Mi"))
    if not 0 < cpu <= 8:
        raise invalid_argument(f"Invalid value specified for cpu: {cpu:g}; must be at most 8.")
    if not 0 < memory <= 32 * GIB:
        raise invalid_argument("Invalid value specified for memory: must be at most 32Gi.")
    gpu = gpu_of(t)
    if gpu is None:
        return
    if gpu.accelerator not in ACCELERATORS:
        if not gpu.accelerator:
            raise invalid_argument(
                "template.node_selector.accelerator must be set when a GPU is requested "
                f"({GPU_LIMIT} limit)."
            )
        raise invalid_argument(
            f"spec.template.spec.node_selector: Invalid value specified for accelerator "
            f"'{gpu.accelerator}'. Supported values: {', '.join(ACCELERATORS)}."
        )
    if gpu.count != 1:
        raise invalid_argument(
            f"template.containers[0].resources.limits['{GPU_LIMIT}']: Invalid value "
            f"{resources.limits.get(GPU_LIMIT, '(unset)')!r}; exactly 1 GPU per instance is "
            "supported."
        )
    if cpu < 4:
        raise invalid_argument(
            f"Invalid value specified for cpu: GPU services require at least 4 CPU, got {cpu:g}."
        )
    if memory < 16 * GIB:
        raise invalid_argument(
            "Invalid value specified for memory: GPU services require at least 16Gi, got "
            f"{resources.limits.get('memory', '512Mi')}."
        )
    throttled = resources.cpu_idle or (
        t.annotations.get("run.googleapis.com/cpu-throttling", "").lower() == "true"
    )
    if throttled:
        raise invalid_argument(
            "GPU services require CPU to be always allocated: set "
            "template.containers[0].resources.cpu_idle=false (gcloud --no-cpu-throttling)."
        )


def quota_message(requested: int, allowed: int, quota_id: str) -> str:
    return (
        f"spec.template.metadata.annotations[autoscaling.knative.dev/maxScale]: Max instances "
        f"must be set to {allowed} or fewer in order to set GPU requirements. To request quota: "
        f"g.co/cloudrun/gpu-quota Quota violated: {quota_id} requested: {requested} "
        f"allowed: {allowed}"
    )


def total_cpu_quota_message(fit: int, violated: dict[str, tuple[int, int]]) -> str:
    """Google's CPU/memory admission error (v2 field path, as Terraform users quote it)."""
    lines = "\n".join(f"{q} requested: {r} allowed: {a}" for q, (r, a) in violated.items())
    return (
        f"scaling.max_instance_count: Max instances must be set to {fit} or fewer to set the "
        f"requested total CPU.\n\nQuota violated:\n{lines}"
    )


def revision_name(service_id: str, generation: int) -> str:
    letters = "".join(secrets.choice(string.ascii_lowercase) for _ in range(3))
    return f"{service_id}-{generation:05d}-{letters}"


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _etag(*parts: object) -> str:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return '"' + base64.urlsafe_b64encode(digest[:12]).decode() + '"'


# ---------------------------------------------------------------------------------------------
# Service backends (emulator.ollama processes).


class RunningBackend(Protocol):
    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


class Launcher(Protocol):
    def __call__(
        self, *, engine: str, models: Sequence[str], env: Mapping[str, str], log_path: Path | None
    ) -> RunningBackend: ...


@dataclass
class OllamaProcess:
    """An `emulator.ollama` child process serving one revision."""

    server: Any

    @property
    def url(self) -> str:
        return str(self.server.base_url)

    def stop(self) -> None:
        from emulator.ollama import stop_ollama_server

        stop_ollama_server(self.server)


def launch_ollama(
    *, engine: str, models: Sequence[str], env: Mapping[str, str], log_path: Path | None
) -> RunningBackend:
    """Start the server and, for the llama engine, load the model before reporting ready."""
    from emulator.ollama import start_ollama_server

    server = start_ollama_server(
        engine="llama" if engine == "llama" else "sim",
        models=models,
        env=env,
        log_path=log_path,
        ready_timeout=300.0,
    )
    backend = OllamaProcess(server)
    if engine == "llama":
        try:
            for spec in models:
                name = spec.split("=", 1)[0]
                r = httpx.post(f"{backend.url}/api/generate", json={"model": name}, timeout=300)
                r.raise_for_status()
        except BaseException:
            backend.stop()
            raise
    return backend


# ---------------------------------------------------------------------------------------------
# The backend.


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


class CloudRunBackend:
    """Services by (project, location, id). Knows nothing of HTTP."""

    def __init__(self, emulator: Emulator, launcher: Launcher | None = None) -> None:
        self._emulator = emulator
        self._launcher: Launcher = launcher or launch_ollama
        self._services: dict[tuple[str, str, str], ServiceRecord] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- helpers -------------------------------------------------------------------------------

    def _project(self, project: str) -> str:
        return str(self._emulator.service_usage.resolve_project(project))

    def _key(self, project: str, location: str, service_id: str) -> tuple[str, str, str]:
        return (self._project(project), location, service_id)

    def _record(self, project: str, location: str, service_id: str) -> ServiceRecord:
        record = self._services.get(self._key(project, location, service_id))
        if record is None:
            raise not_found(
                f"Resource '{service_id}' of kind 'SERVICE' in region '{location}' in project "
                f"'{project}' does not exist."
            )
        return record

    def _check_quota(self, project: str, location: str, service: run_v2.Service) -> None:
        """Admission against the Cloud Quotas values in force (emulator/gcp/cloud_quotas.py)."""
        quotas = self._emulator.backend("cloud_quotas")
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
        validate_service(spec, location)
        self._check_quota(key[0], location, spec)
        if validate_only:
            return self._validated_operation(spec)
        now = self._emulator.clock()
        service = self._output_spec(spec)
        service.uid = str(uuid.uuid4())
        service.create_time = _ts(now)
        service.creator = caller or ""
        empty_policy = policy_pb2.Policy(version=1, etag=base64.b64decode("ACAB"))
        record = ServiceRecord(key[0], location, service_id, service, empty_policy)
        self._services[key] = record
        record.ingress = Ingress(self._emulator.signer.verify_id_token, IngressRules())
        record.ingress.bind()
        self._new_generation(record, spec, caller, now, template_changed=True)
        return self._operation(record, record.generation)

    def get_service(self, project: str, location: str, service_id: str) -> run_v2.Service:
        return self._record(project, location, service_id).service

    def list_services(
        self, project: str, location: str, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        p = self._project(project)
        records = sorted(
            (r for (rp, loc, _), r in self._services.items() if rp == p and loc in (location, "-")),
            key=lambda r: r.service_id,
        )
        start = int(page_token) if page_token.isdigit() else 0
        size = page_size if 0 < page_size <= 1000 else 100
        out: dict[str, Any] = {
            "services": [message_to_json(r.service) for r in records[start : start + size]]
        }
        if start + size < len(records):
            out["nextPageToken"] = str(start + size)
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
            merged = run_v2.Service.pb(self._spec_of(record.service))
            mask = field_mask_pb2.FieldMask(paths=[_snake(p) for p in update_mask])
            try:
                mask.MergeMessage(
                    run_v2.Service.pb(spec),
                    merged,
                    replace_message_field=True,
                    replace_repeated_field=True,
                )
            except ValueError as exc:
                raise invalid_argument(f"Invalid update_mask: {exc}") from exc
            spec = run_v2.Service.wrap(merged)
        spec.name = record.service.name
        validate_service(spec, location)
        self._check_quota(key[0], location, spec)
        if validate_only:
            return self._validated_operation(spec)
        current = self._spec_of(record.service)
        template_changed = _template_key(current.template) != _template_key(spec.template)
        if run_v2.Service.pb(current) == run_v2.Service.pb(self._spec_of(self._output_spec(spec))):
            return self._operation(record, record.generation)  # nothing changed: no new generation
        self._new_generation(record, spec, caller, self._emulator.clock(), template_changed)
        return self._operation(record, record.generation)

    def delete_service(self, project: str, location: str, service_id: str) -> dict[str, Any]:
        record = self._record(project, location, service_id)
        del self._services[self._key(project, location, service_id)]
        record.deleted = True
        now = self._emulator.clock()
        record.service.delete_time = _ts(now)
        record.service.reconciling = True
        snapshot = run_v2.Service.wrap(run_v2.Service.pb(record.service))
        self._spawn(self._stop_record, record)

        def resolve() -> Outcome | None:
            return (snapshot, None) if record.stopped.is_set() else None

        name = f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}"
        return self._emulator.operations.create(
            name,
            snapshot,
            resolve=resolve,
            polls_until_done=self._emulator.config.operation_polls,
        )

    def get_iam_policy(self, project: str, location: str, service_id: str) -> policy_pb2.Policy:
        return self._record(project, location, service_id).policy

    def set_iam_policy(
        self, project: str, location: str, service_id: str, policy: policy_pb2.Policy
    ) -> policy_pb2.Policy:
        record = self._record(project, location, service_id)
        if policy.etag and policy.etag != record.policy.etag:
            raise GoogleApiError(
                409,
                "ABORTED",
                "There were concurrent policy changes. Please retry the whole read-modify-write "
                "with exponential backoff.",
            )
        for binding in policy.bindings:
            if not binding.role.startswith("roles/"):
                raise invalid_argument(f"Role {binding.role} is not a valid role.")
            for member in binding.members:
                if member not in ("allUsers", "allAuthenticatedUsers") and not re.match(
                    r"^(user|serviceAccount|group|domain|principal|principalSet):.+", member
                ):
                    raise invalid_argument(
                        f"Invalid principal: {member}. Principals must be of the form "
                        "'user:EMAIL', 'serviceAccount:EMAIL', 'group:EMAIL', 'domain:DOMAIN', "
                        "'allUsers' or 'allAuthenticatedUsers'."
                    )
        new = policy_pb2.Policy()
        new.CopyFrom(policy)
        new.version = max(1, policy.version)
        new.etag = secrets.token_bytes(8)
        record.policy = new
        self._apply_rules(record)
        return new

    # -- generations, revisions and reconciliation ----------------------------------------------

    def _output_spec(self, spec: run_v2.Service) -> run_v2.Service:
        """The spec with Google's defaults filled in (no output-only fields)."""
        service = self._spec_of(spec)
        t = service.template
        if not service.ingress:
            service.ingress = run_v2.IngressTraffic(1)  # INGRESS_TRAFFIC_ALL
        if not service.launch_stage:
            service.launch_stage = launch_stage_pb2.LaunchStage.GA
        if not service.traffic:
            service.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]
        if "timeout" not in t:
            t.timeout = duration_pb2.Duration(seconds=DEFAULT_TIMEOUT_SECONDS)
        if not t.max_instance_request_concurrency:
            t.max_instance_request_concurrency = DEFAULT_CONCURRENCY
        if not t.scaling.max_instance_count and not service.scaling.max_instance_count:
            t.scaling.max_instance_count = DEFAULT_MAX_INSTANCES
        if not t.service_account:
            number = project_number(spec.name.split("/")[1])
            t.service_account = f"{number}-compute@developer.gserviceaccount.com"
        container = t.containers[0]
        limits = container.resources.limits
        limits.setdefault("cpu", "1000m")
        limits.setdefault("memory", "512Mi")
        if not container.ports:
            container.ports = [run_v2.ContainerPort(name="http1", container_port=8080)]
        return service

    @staticmethod
    def _spec_of(service: run_v2.Service) -> run_v2.Service:
        """Only the writable fields of a Service."""
        out = run_v2.Service()
        for name in (
            "name", "description", "labels", "annotations", "client", "client_version",
            "ingress", "launch_stage", "binary_authorization", "template", "traffic", "scaling",
            "invoker_iam_disabled", "default_uri_disabled", "custom_audiences",
        ):  # fmt: skip
            if name in service:
                setattr(out, name, getattr(service, name))
        return out

    def _new_generation(
        self,
        record: ServiceRecord,
        spec: run_v2.Service,
        caller: str | None,
        now: float,
        template_changed: bool,
    ) -> None:
        old = record.service
        new = self._output_spec(spec)
        for name in (
            "uid", "create_time", "creator", "latest_created_revision", "latest_ready_revision",
            "traffic_statuses", "terminal_condition", "conditions", "observed_generation",
        ):  # fmt: skip
            if name in old:
                setattr(new, name, getattr(old, name))
        generation = int(old.generation) + 1 if old.latest_created_revision else 1
        new.generation = generation
        new.update_time = _ts(now)
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
        self._set_etag(record)
        if template_changed or record.backend is None:
            self._start_reconcile(record, generation)
        else:
            self._mark_ready(record, generation)

    def _set_etag(self, record: ServiceRecord) -> None:
        s = record.service
        record.service.etag = _etag(s.uid, s.generation, s.update_time, s.terminal_condition)

    def _set_condition(self, record: ServiceRecord, state: State, message: str = "") -> None:
        now = _ts(self._emulator.clock())
        s = record.service
        s.reconciling = state == RECONCILING
        s.terminal_condition = run_v2.Condition(
            type_="Ready", state=state, message=message, last_transition_time=now
        )
        s.conditions = [
            run_v2.Condition(type_=kind, state=state, message=message, last_transition_time=now)
            for kind in ("RoutesReady", "ConfigurationsReady")
        ]
        self._set_etag(record)

    def _start_reconcile(self, record: ServiceRecord, generation: int) -> None:
        self._set_condition(record, RECONCILING)
        image_uri = record.service.template.containers[0].image
        image = self._emulator.artifact_registry.find_image(image_uri)
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
        config = self._emulator.config
        models = []
        if model:
            models = [
                f"{model}={config.stand_in_model}" if config.ollama_engine == "llama" else model
            ]
        template = record.service.template
        env = {**config.sim_env}
        for var in template.containers[0].env:
            if var.name not in ("OLLAMA_HOST", "PORT"):
                env[var.name] = var.value
        parallel = int(env.get("OLLAMA_NUM_PARALLEL", "1") or 1)
        env["OLLAMA_NUM_PARALLEL"] = str(max(1, parallel) * max_instances(record.service))
        log_path = None
        if config.state_dir is not None:
            log_path = Path(config.state_dir) / "run" / f"{record.service_id}-{generation}.log"
        self._spawn(
            self._reconcile,
            record,
            generation,
            config.ollama_engine,
            models,
            env,
            log_path,
        )

    def _reconcile(
        self,
        record: ServiceRecord,
        generation: int,
        engine: str,
        models: list[str],
        env: dict[str, str],
        log_path: Path | None,
    ) -> None:
        try:
            backend = self._launcher(engine=engine, models=models, env=env, log_path=log_path)
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
            current = not record.deleted and not self._closed and record.generation == generation
            if current:
                old, record.backend = record.backend, backend
                record.backend_generation = generation
                self._mark_ready(record, generation)
                self._emulator.save()
        if not current:
            backend.stop()
        if old is not None:
            old.stop()

    def _mark_ready(self, record: ServiceRecord, generation: int) -> None:
        s = record.service
        s.observed_generation = generation
        s.latest_ready_revision = s.latest_created_revision
        s.traffic_statuses = [run_v2.TrafficTargetStatus(type_=LATEST, percent=100, uri=s.uri)]
        self._set_condition(record, SUCCEEDED)
        record.outcomes[generation] = None
        self._apply_rules(record)
        if record.ingress is not None and record.backend is not None:
            record.ingress.backend_url = record.backend.url
            record.ingress.start()

    def _mark_failed(self, record: ServiceRecord, generation: int, error: GoogleApiError) -> None:
        record.service.observed_generation = generation
        self._set_condition(record, FAILED, error.message)
        record.outcomes[generation] = error
        if record.ingress is not None:
            record.ingress.start()  # keeps serving the last ready revision (503 when none)

    def _apply_rules(self, record: ServiceRecord) -> None:
        if record.ingress is None:
            return
        s = record.service
        members = frozenset(
            m for b in record.policy.bindings if b.role in INVOKER_ROLES for m in b.members
        )
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
        )

    def _operation(self, record: ServiceRecord, generation: int) -> dict[str, Any]:
        def metadata() -> run_v2.Service:
            return record.service

        def resolve() -> Outcome | None:
            done = [g for g in record.outcomes if g >= generation]
            if not done:
                return None
            error = record.outcomes[min(done)]
            return (record.service, None) if error is None else (None, error)

        project, location = record.project, record.location
        name = f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}"
        return self._emulator.operations.create(
            name,
            metadata,
            resolve=resolve,
            polls_until_done=self._emulator.config.operation_polls,
        )

    def _validated_operation(self, spec: run_v2.Service) -> dict[str, Any]:
        project, location = spec.name.split("/")[1], spec.name.split("/")[3]
        name = f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}"
        return self._emulator.operations.create_done(name, spec, spec)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="cloud-run")
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _stop_record(self, record: ServiceRecord) -> None:
        try:
            if record.ingress is not None:
                record.ingress.stop()
            if record.backend is not None:
                record.backend.stop()
        finally:
            record.stopped.set()

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
                    "port": r.ingress.port if r.ingress is not None else 0,
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
            record.ingress = Ingress(
                self._emulator.signer.verify_id_token, IngressRules(), port=data.get("port", 0)
            )
            record.ingress.bind()
            if record.ingress.url != service.uri:
                service.uri = record.ingress.url
                service.urls = [record.ingress.url]
            self._services[(record.project, record.location, record.service_id)] = record
            if service.latest_ready_revision or service.reconciling:
                self._start_reconcile(record, record.generation)

    def close(self) -> None:
        self._closed = True
        records = list(self._services.values())
        for record in records:
            self._stop_record(record)
        for thread in self._threads:
            thread.join(timeout=1)


def _template_key(template: run_v2.RevisionTemplate) -> bytes:
    pb = run_v2.RevisionTemplate.pb(template)
    copy = type(pb)()
    copy.CopyFrom(pb)
    copy.revision = ""
    return copy.SerializeToString(deterministic=True)


def _snake(path: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", path).lower()


# ---------------------------------------------------------------------------------------------
# Routes: parse, call one backend method, serialise.


def routes(emulator: Emulator) -> list[Route]:
    def backend(call: Call) -> CloudRunBackend:
        return call.emulator.cloud_run

    def ids(call: Call) -> tuple[str, str, str]:
        return call.param("project"), call.param("location"), call.param("service")

    def flag(call: Call, name: str) -> bool:
        return call.query.get(name, "false").lower() in ("true", "1")

    def create(call: Call) -> dict[str, Any]:
        project, location = call.param("project"), call.param("location")
        return backend(call).create_service(
            project,
            location,
            call.query.get("serviceId", ""),
            call.body,
            call.caller,
            flag(call, "validateOnly"),
        )

    def get(call: Call) -> run_v2.Service:
        return backend(call).get_service(*ids(call))

    def list_(call: Call) -> dict[str, Any]:
        q = call.query
        size = q.get("pageSize", "0")
        if not size.lstrip("-").isdigit():
            raise invalid_argument(f"Invalid value at 'page_size' (TYPE_INT32), \"{size}\"")
        return backend(call).list_services(
            call.param("project"), call.param("location"), int(size), q.get("pageToken", "")
        )

    def update(call: Call) -> dict[str, Any]:
        mask = [p for p in call.query.get("updateMask", "").split(",") if p]
        return backend(call).update_service(
            *ids(call),
            call.body,
            call.caller,
            allow_missing=flag(call, "allowMissing"),
            update_mask=mask,
            validate_only=flag(call, "validateOnly"),
        )

    def delete(call: Call) -> dict[str, Any]:
        return backend(call).delete_service(*ids(call))

    def get_iam_policy(call: Call) -> policy_pb2.Policy:
        return backend(call).get_iam_policy(*ids(call))

    def set_iam_policy(call: Call) -> policy_pb2.Policy:
        request = iam_policy_pb2.SetIamPolicyRequest()
        try:
            json_format.ParseDict(call.body, request)
        except json_format.ParseError as exc:
            raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
        return backend(call).set_iam_policy(*ids(call), request.policy)

    def test_iam_permissions(call: Call) -> dict[str, Any]:
        backend(call).get_service(*ids(call))
        return {"permissions": list(call.body.get("permissions", []))}

    base = "/v2/projects/{project}/locations/{location}/services"
    one = base + "/{service}"
    return [
        Route("POST", base, create, SERVICE),
        Route("GET", base, list_, SERVICE),
        Route("GET", one, get, SERVICE),
        Route("PATCH", one, update, SERVICE),
        Route("DELETE", one, delete, SERVICE),
        Route("GET", one + ":getIamPolicy", get_iam_policy, SERVICE),
        Route("POST", one + ":setIamPolicy", set_iam_policy, SERVICE),
        Route("POST", one + ":testIamPermissions", test_iam_permissions, SERVICE),
    ]


__all__ = [
    "CloudRunBackend",
    "launch_ollama",
    "parse_cpu",
    "parse_memory",
    "quota_message",
    "routes",
    "validate_service",
    "validate_service_id",
]
