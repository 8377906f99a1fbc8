"""Cloud Run's allocation quotas for one service: what ``max_instances`` needs, what fits, and
every quota message Google sends at deploy time parsed into one :class:`QuotaExceededError`.

Quotas (service ``run.googleapis.com``, per project and region, Cloud Quotas API ids):

==================================================  ==========  ================================
quota id                                            unit        what one instance takes
==================================================  ==========  ================================
NvidiaL4GpuAllocPerProjectRegion                    GPU         ``gpu`` (zonal redundancy on)
NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion   GPU         ``gpu`` (zonal redundancy off)
CpuAllocPerProjectRegion                            milli-vCPU  ``cpu`` × 1000
MemAllocPerProjectRegion                            byte        ``memory``
==================================================  ==========  ================================

Cloud Run admits a revision only when ``max_instances`` × the per-instance amount fits each quota
(its errors report exactly that product: 4 instances × 8 vCPU → "CpuAllocPerProjectRegion
requested: 32000 allowed: 20000"; 100 × 8Gi → "MemAllocPerProjectRegion requested:
858993459200"). Units and ids: cloud.google.com/run/quotas, cloud.google.com/run/docs/configuring/
services/gpu ("Total Nvidia L4 GPU allocation, per project per region") and the messages below.

The messages Google sends (seen verbatim in public gcloud/Terraform deploy logs quoted in GitHub
repositories, 2025-2026, found with a code search; the first as shared/reference/gcp-apis.md §9
records it, pointing at firebase/firebase-tools#5867):

- ``Max instances must be set to 3 or fewer in order to set GPU requirements. To request quota:
  g.co/cloudrun/gpu-quota Quota violated: NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion
  requested: 7 allowed: 3``
- ``You do not have quota for using GPUs with zonal redundancy. Learn more about GPU zonal
  redundancy: g.co/cloudrun/gpu-redundancy-help\\n\\nTo request quota: g.co/cloudrun/gpu-quota``
  (and ``... without zonal redundancy.``): no quota at all in that pool (gcloud then offers to
  deploy without redundancy; workshop repos quote both).
- ``Max instances must be set to 2 or fewer to set the requested total CPU.\\n\\nQuota violated:
  \\nCpuAllocPerProjectRegion requested: 32000 allowed: 20000`` — one line per violated quota,
  sometimes bulleted (``- MemAllocPerProjectRegion requested: ... allowed: ...``); "in order to
  set the requested total CPU" is accepted too. "set to 0 or fewer" means not one instance fits.
- ``Revision '...' is not ready and cannot serve traffic. Quota exceeded for total allowable count
  of GPUs per project per region.`` (while reconciling, GoogleCloudPlatform/magic-modules#17149).

Never advise ``max_instances=0``: the parameter is >= 1, and 0 in Cloud Run means "default".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.errors import QuotaExceededError
from tasks.models import ServiceSpec

SERVICE = "run.googleapis.com"
GPU_ZONAL = "NvidiaL4GpuAllocPerProjectRegion"
GPU_NO_ZONAL = "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
CPU = "CpuAllocPerProjectRegion"
MEMORY = "MemAllocPerProjectRegion"
GPU_QUOTAS = frozenset({GPU_ZONAL, GPU_NO_ZONAL})

GPU_QUOTA_URL = "https://g.co/cloudrun/gpu-quota"  # Google's own link, from its error messages
QUOTAS_CONSOLE_URL = "https://console.cloud.google.com/iam-admin/quotas"

_TITLES = {
    GPU_ZONAL: "Total Nvidia L4 GPU allocation, with zonal redundancy",
    GPU_NO_ZONAL: "Total Nvidia L4 GPU allocation, without zonal redundancy",
    CPU: "Total CPU allocation",
    MEMORY: "Total memory allocation",
}

_VIOLATION_RE = re.compile(
    r"\b(?P<quota>[A-Z][A-Za-z0-9]+)\s+requested:\s*(?P<requested>\d+)\s+allowed:\s*(?P<allowed>\d+)"
)
_BARE_VIOLATION_RE = re.compile(r"Quota violated:\s*(?:-\s*)?(?P<quota>[A-Z][A-Za-z0-9]+)")
_MAX_INSTANCES_RE = re.compile(r"Max instances must be set to (?P<n>\d+) or fewer")
_NO_GPU_QUOTA_RE = re.compile(
    r"You do not have quota for using GPUs (?P<pool>with|without) zonal redundancy"
)
# Not every "Quota exceeded": a 429 rate-limit quota ("... for quota metric 'Read requests'") is
# transient and must stay retryable.
_GENERIC_RE = re.compile(r"Quota violated|Quota exceeded for total allowable count of GPUs")


def title(quota_id: str) -> str:
    return _TITLES.get(quota_id, quota_id)


def gpu_quota_id(zonal_redundancy: bool) -> str:
    return GPU_ZONAL if zonal_redundancy else GPU_NO_ZONAL


def format_amount(quota_id: str, value: int) -> str:
    """A quota amount in the unit people read: vCPU, GiB, GPUs."""
    if quota_id == CPU:
        return f"{value / 1000:g} vCPU"
    if quota_id == MEMORY:
        return f"{value / 2**30:g} GiB"
    if quota_id in GPU_QUOTAS:
        return f"{value} GPU"
    return str(value)


def request_link(quota_id: str | None) -> str:
    return GPU_QUOTA_URL if quota_id is None or quota_id in GPU_QUOTAS else QUOTAS_CONSOLE_URL


# -- what a service needs ------------------------------------------------------------------------


def memory_bytes(memory: str) -> int:
    """``32Gi`` → 34359738368 (the unit of MemAllocPerProjectRegion)."""
    value, unit = int(memory[:-2]), memory[-2:]
    return value * (2**30 if unit == "Gi" else 2**20)


def per_instance(spec: ServiceSpec) -> dict[str, int]:
    """Quota id → amount one instance of ``spec`` takes, in the quota's unit."""
    needs = {CPU: spec.cpu * 1000, MEMORY: memory_bytes(spec.memory)}
    if spec.gpu:
        needs = {gpu_quota_id(spec.gpu_zonal_redundancy): spec.gpu, **needs}
    return needs


@dataclass(frozen=True)
class QuotaShortfall:
    """One quota that ``max_instances`` × per-instance does not fit."""

    quota_id: str
    limit: int
    per_instance: int
    max_instances: int

    @property
    def need(self) -> int:
        return self.max_instances * self.per_instance

    @property
    def max_fit(self) -> int:
        return self.limit // self.per_instance

    def describe(self) -> str:
        return (
            f"{self.quota_id} ({title(self.quota_id)}) is "
            f"{format_amount(self.quota_id, self.limit)}; max_instances={self.max_instances} needs "
            f"{format_amount(self.quota_id, self.need)} ({self.max_instances} × "
            f"{format_amount(self.quota_id, self.per_instance)}), so at most {self.max_fit} "
            "instance(s) fit"
        )


def shortfalls(spec: ServiceSpec, limits: dict[str, int]) -> list[QuotaShortfall]:
    """The quotas in ``limits`` (id → value in force) that ``spec.max_instances`` exceeds."""
    out = []
    for quota_id, amount in per_instance(spec).items():
        limit = limits.get(quota_id)
        if limit is not None and spec.max_instances * amount > limit:
            out.append(QuotaShortfall(quota_id, limit, amount, spec.max_instances))
    return out


def fix_advice(max_fit: int | None, quota_ids: list[str]) -> str:
    """What to do; never ``max_instances=0`` (invalid here, and "no limit" to Cloud Run)."""
    links = sorted({request_link(q) for q in quota_ids} or {GPU_QUOTA_URL})
    where = " and ".join(links)
    if max_fit is None:
        return f"Lower max_instances or request more quota at {where}."
    if max_fit < 1:
        return (
            f"Not one instance fits: request quota at {where} before deploying "
            "(max_instances must be at least 1)."
        )
    return (
        f"At most {max_fit} instance(s) fit: set max_instances={max_fit}, "
        f"or request more quota at {where}."
    )


def shortfall_error(found: list[QuotaShortfall], project: str, region: str) -> QuotaExceededError:
    """The preflight's quota error: each quota, its limit, the need, and what fits."""
    max_fit = min(s.max_fit for s in found)
    lines = [f"Quota too small in {region} (project {project}):"]
    lines += [f"  - {s.describe()}." for s in found]
    lines.append(fix_advice(max_fit, [s.quota_id for s in found]))
    for s in found:
        lines.append(
            f"  gcloud beta quotas preferences create --service={SERVICE} "
            f"--quota-id={s.quota_id} --preferred-value={s.need} --dimensions=region={region} "
            f"--project={project}"
        )
    return QuotaExceededError("\n".join(lines), quota=found[0].quota_id, max_fit=max_fit)


# -- Google's messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    quota_id: str
    requested: int | None = None
    allowed: int | None = None


@dataclass(frozen=True)
class ParsedQuotaMessage:
    violations: tuple[Violation, ...]
    max_fit: int | None


def parse_quota_message(message: str) -> ParsedQuotaMessage | None:
    """Google's quota message → the quotas it names and the instances that fit; None otherwise."""
    violations = [
        Violation(m["quota"], int(m["requested"]), int(m["allowed"]))
        for m in _VIOLATION_RE.finditer(message)
    ]
    max_fit: int | None = None
    if (m := _MAX_INSTANCES_RE.search(message)) is not None:
        max_fit = int(m["n"])
    if (m := _NO_GPU_QUOTA_RE.search(message)) is not None:
        violations.append(Violation(gpu_quota_id(m["pool"] == "with"), None, 0))
        max_fit = 0
    if not violations and (m := _BARE_VIOLATION_RE.search(message)) is not None:
        violations.append(Violation(m["quota"]))
    if max_fit is None:
        # Only a GPU allowance converts to instances (one L4 per instance, the only option).
        gpu = [v.allowed for v in violations if v.quota_id in GPU_QUOTAS and v.allowed is not None]
        if gpu:
            max_fit = min(gpu)
    if not violations and max_fit is None and not _GENERIC_RE.search(message):
        return None
    return ParsedQuotaMessage(tuple(violations), max_fit)


def is_quota_message(message: str) -> bool:
    return parse_quota_message(message) is not None


def _describe_violation(v: Violation) -> str:
    text = f"{v.quota_id} ({title(v.quota_id)})"
    if v.allowed is not None and v.requested is not None:
        text += (
            f": allowed {format_amount(v.quota_id, v.allowed)}, "
            f"requested {format_amount(v.quota_id, v.requested)}"
        )
    elif v.allowed == 0:
        text += ": no quota at all"
    return text


def quota_error_from_message(message: str, *, requested: int | None = None) -> QuotaExceededError:
    """Any of Google's quota messages → one error naming each quota and what fits."""
    parsed = parse_quota_message(message) or ParsedQuotaMessage((), None)
    quota_ids = [v.quota_id for v in parsed.violations]
    named = "; ".join(_describe_violation(v) for v in parsed.violations) or "quota exceeded"
    parts = [f"Cloud Run quota too small: {named}.", fix_advice(parsed.max_fit, quota_ids)]
    if requested is not None:
        parts.append(f"(requested max_instances={requested})")
    parts.append(f"Google said: {message}")
    return QuotaExceededError(
        " ".join(parts), quota=quota_ids[0] if quota_ids else None, max_fit=parsed.max_fit
    )
