"""Where the prompts go: Cloud Run services found by name, or any base URLs.

For a Cloud Run service the uri, max instances, per-instance concurrency and the instance's
resources (for the cost estimate) are read from Cloud Run Admin v2 through the official client.
Several targets share the in-flight requests in proportion to their slots (``lane_limits``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from google.cloud import run_v2

from tasks.batch.target_refs import SERVICE_ID_RE
from tasks.clients import GoogleCloud, run_services_client
from tasks.errors import ConfigurationError, ServiceNotReadyError, google_errors

CLOUD_RUN_DEFAULT_CONCURRENCY = 80  # Cloud Run's default when the template leaves it 0
CLOUD_RUN_DEFAULT_MAX_INSTANCES = 100
# A revision's request timeout when its template sets none: 300 s ("Set request timeout",
# https://cloud.google.com/run/docs/configuring/request-timeout; RevisionTemplate.timeout).
CLOUD_RUN_DEFAULT_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class Target:
    uri: str
    service: str | None  # Cloud Run service name, None for a plain URL
    max_instances: int
    concurrency: int
    cpu: float = 8.0
    memory_gib: float = 32.0
    gpus: int = 1
    gpu_zonal_redundancy: bool = False
    region: str | None = None  # a Cloud Run service's
    explicit_slots: int | None = None  # ``#slots=N`` given with the target
    timeout_seconds: float | None = None  # the service's request timeout; None for a plain URL

    @property
    def slots(self) -> int:
        return self.explicit_slots or self.max_instances * self.concurrency

    @property
    def label(self) -> str:
        """How logs, the summary and the manifest name it: ``region/service`` or the URL."""
        return f"{self.region}/{self.service}" if self.service and self.region else self.uri

    def request_timeout(self, requested: float) -> tuple[float, str | None]:
        """The per-request timeout to use: ``requested``, but never longer than the service's
        own (Cloud Run answers 504 past it, so waiting longer only delays the retry); and the
        line that says so when it was cut."""
        if self.timeout_seconds is None or requested <= self.timeout_seconds:
            return requested, None
        return self.timeout_seconds, (
            f"request_timeout_seconds={requested:g} exceeds the timeout of {self.label} "
            f"({self.timeout_seconds:g} s): each request waits at most {self.timeout_seconds:g} s"
        )


def lane_limits(targets: list[Target], in_flight: int | None) -> list[int]:
    """Each target's in-flight limit: its slots, or ``in_flight`` shared in proportion to them
    (at least one each). One target takes ``in_flight`` whole, as it always did."""
    if in_flight is None:
        return [t.slots for t in targets]
    if len(targets) == 1:
        return [in_flight]
    total = sum(t.slots for t in targets)
    return [max(1, round(in_flight * t.slots / total)) for t in targets]


def _cpu(value: str | None, default: float) -> float:
    if not value:
        return default
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _memory_gib(value: str | None, default: float) -> float:
    if not value:
        return default
    units = {
        "Ki": 2**-20,
        "Mi": 2**-10,
        "Gi": 1.0,
        "Ti": 1024.0,
        "K": 1e3 / 2**30,
        "M": 1e6 / 2**30,
        "G": 1e9 / 2**30,
    }
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value) / 2**30


def target_from_service(service: run_v2.Service) -> Target:
    if not service.uri:
        raise ServiceNotReadyError(f"Cloud Run service {service.name} has no uri yet (not ready?)")
    ready = run_v2.Condition.State.CONDITION_SUCCEEDED
    if service.terminal_condition and service.terminal_condition.state not in (0, ready):
        raise ServiceNotReadyError(
            f"Cloud Run service {service.name} is not ready: {service.terminal_condition.message}"
        )
    template = service.template
    max_instances = (
        template.scaling.max_instance_count
        or service.scaling.max_instance_count
        or CLOUD_RUN_DEFAULT_MAX_INSTANCES
    )
    concurrency = template.max_instance_request_concurrency or CLOUD_RUN_DEFAULT_CONCURRENCY
    limits = dict(template.containers[0].resources.limits) if template.containers else {}
    return Target(
        uri=service.uri.rstrip("/"),
        service=service.name.rsplit("/", 1)[-1],
        max_instances=max_instances,
        concurrency=concurrency,
        cpu=_cpu(limits.get("cpu"), 1.0),
        memory_gib=_memory_gib(limits.get("memory"), 0.5),
        gpus=int(limits.get("nvidia.com/gpu", "0") or 0),
        gpu_zonal_redundancy=not template.gpu_zonal_redundancy_disabled,
        timeout_seconds=(
            template.timeout.total_seconds()
            if template.timeout
            else CLOUD_RUN_DEFAULT_TIMEOUT_SECONDS
        ),
    )


def lookup_service(cloud: GoogleCloud, region: str, name: str) -> Target:
    if not SERVICE_ID_RE.match(name):
        raise ConfigurationError(
            f"target {name!r} is neither an http(s):// URL nor a Cloud Run service name "
            "(lowercase letters, digits and '-', starting with a letter, at most 49 characters)"
        )
    client = run_services_client(cloud)
    with google_errors(f"read the Cloud Run service {name} in {region}"):
        path = client.service_path(cloud.project, region, name)
        service = client.get_service(name=path, timeout=30)
    return replace(target_from_service(service), region=region)


def url_target(url: str, concurrency: int) -> Target:
    """A plain Ollama / OpenAI-compatible server: one instance, ``concurrency`` slots, no cost."""
    return Target(
        uri=url.rstrip("/"), service=None, max_instances=1, concurrency=concurrency, gpus=0
    )
