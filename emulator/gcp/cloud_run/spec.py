"""Cloud Run Admin API v2 services: Google's admission checks and defaults. Pure.

Validation is Google's, as INVALID_ARGUMENT on the call: the service id, GPU services (a known
accelerator, one GPU, >= 4 CPU and >= 16 GiB, CPU always allocated), request concurrency
1..1000, max instances 0..1000, request timeout <= 3600 s, and (with the backend's count of what
is in use) a GPU quota per project, region and pool (with / without zonal redundancy) and CPU /
memory allocation quotas, against the values the emulated Cloud Quotas API serves.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass

from google.api import launch_stage_pb2
from google.cloud import run_v2
from google.protobuf import duration_pb2, field_mask_pb2

from emulator.gcp.errors import invalid_argument, unimplemented
from emulator.gcp.projects import project_number

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


def instance_based_billing(template: run_v2.RevisionTemplate) -> bool:
    """CPU always allocated (`cpu_idle` false once resources are set; the run_v2 field's doc:
    "if ResourceRequirements is set, the caller must explicitly set this field to true to
    preserve the default behavior") bills the instance's whole life; else request-based."""
    if not template.containers or "resources" not in template.containers[0]:
        return False
    throttling = template.annotations.get("run.googleapis.com/cpu-throttling", "").lower()
    return not template.containers[0].resources.cpu_idle and throttling != "true"


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
                raise unimplemented("emulator.gcp does not implement secret env values")
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
    _validate_gpu(t, cpu, memory)


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


def etag(*parts: object) -> str:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return '"' + base64.urlsafe_b64encode(digest[:12]).decode() + '"'


def _validate_gpu(t: run_v2.RevisionTemplate, cpu: float, memory: int) -> None:
    """GPU services: a known accelerator, one GPU, >= 4 CPU and >= 16 GiB, CPU always allocated."""
    gpu = gpu_of(t)
    resources = t.containers[0].resources
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


def output_spec(spec: run_v2.Service) -> run_v2.Service:
    """The spec with Google's defaults filled in (no output-only fields)."""
    service = spec_of(spec)
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


def spec_of(service: run_v2.Service) -> run_v2.Service:
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


def template_key(template: run_v2.RevisionTemplate) -> bytes:
    pb = run_v2.RevisionTemplate.pb(template)
    copy = type(pb)()
    copy.CopyFrom(pb)
    copy.revision = ""
    return copy.SerializeToString(deterministic=True)


def snake_case(path: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", path).lower()


def merge_update(
    current: run_v2.Service, spec: run_v2.Service, mask: Sequence[str]
) -> run_v2.Service:
    """UpdateService with an update mask: the masked fields of `spec` over `current`."""
    merged = run_v2.Service.pb(current)
    field_mask = field_mask_pb2.FieldMask(paths=[snake_case(p) for p in mask])
    try:
        field_mask.MergeMessage(
            run_v2.Service.pb(spec),
            merged,
            replace_message_field=True,
            replace_repeated_field=True,
        )
    except ValueError as exc:
        raise invalid_argument(f"Invalid update_mask: {exc}") from exc
    return run_v2.Service.wrap(merged)
