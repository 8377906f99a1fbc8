"""Typed parameters shared by the tasks and flows, validated before any call to Google Cloud.

Defaults are the values of Google's "Ollama on Cloud Run GPUs" tutorial::

    gcloud beta run deploy ollama-gemma --image ... --concurrency 4 --cpu 8
      --set-env-vars OLLAMA_NUM_PARALLEL=4 --gpu 1 --gpu-type nvidia-l4 --max-instances 7
      --memory 32Gi --no-allow-unauthenticated --no-cpu-throttling --service-account SA
      --timeout=600

except GPU zonal redundancy: the tutorial's flags keep it on; this project turns it off by
default as a cost choice (README, "GPU zonal redundancy is a cost choice").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANAGED_BY_LABEL = "managed-by"
MANAGED_BY_VALUE = "ollama-cloudrun"
DEPLOYMENT_LABEL = "ollama-cloudrun-deployment"
RUN_LABEL = "ollama-cloudrun-run"
MODEL_ANNOTATION = "ollama-cloudrun/model"
# The declared spec (cloud_run.service_fingerprint as JSON) that deploy sent: what drift compares.
DECLARED_ANNOTATION = "ollama-cloudrun/declared"
# Ownership: who made a resource. Never rewritten by an update (the first maker stays the owner).
OWNER_LABEL = "ollama-cloudrun-owner"
# Idleness (the sweep): Unix seconds of the last deploy, smoke test or batch; an optional deadline
# set by hand; ``keep=true`` exempts a resource from the sweep for good.
LAST_USED_LABEL = "last-used"
EXPIRES_AT_LABEL = "expires-at"
KEEP_LABEL = "keep"
# Labels that record use or ownership rather than the declared spec: never a reason to update.
BOOKKEEPING_LABELS = frozenset({RUN_LABEL, OWNER_LABEL, LAST_USED_LABEL})

# Cloud Run regions that offer NVIDIA L4 GPUs: "Supported regions" of
# https://cloud.google.com/run/docs/configuring/services/gpu (and .../workerpools/gpu), as read on
# 2026-12-03. asia-south1 is "available by invitation only". us-west1 and asia-northeast1, listed
# here before, appear in no version of that page found, so they are not offered.
L4_REGIONS: frozenset[str] = frozenset(
    {"us-central1", "us-east4", "europe-west1", "europe-west4", "asia-southeast1", "asia-south1"}
)
INVITATION_ONLY_L4_REGIONS: frozenset[str] = frozenset({"asia-south1"})


def l4_region_problem(region: str) -> str | None:
    """Why ``region`` cannot host an L4 Cloud Run service, naming the regions that can; or None."""
    if region in L4_REGIONS:
        return None
    offered = ", ".join(
        f"{r} (by invitation)" if r in INVITATION_ONLY_L4_REGIONS else r for r in sorted(L4_REGIONS)
    )
    return f"region {region} has no Cloud Run L4 GPUs; the regions that have them: {offered}"


# How long Google's eventual consistency is waited out (tasks.propagation): a new IAM binding
# "typically" takes 2 minutes, "could potentially take 7 minutes or longer"; a new service account
# a minute or two before Cloud Run may run as it.
INVOKER_PROPAGATION_TIMEOUT_SECONDS = 600.0
SERVICE_ACCOUNT_PROPAGATION_TIMEOUT_SECONDS = 180.0
INVOKER_PROPAGATION_HELP = (
    "how long a 403 from the Cloud Run service to the caller's ID token is taken for a new "
    "run.invoker binding still propagating (Google: typically 2, up to 7 minutes)"
)

SERVICE_ID_PATTERN = r"^[a-z](?:[-a-z0-9]{0,47}[a-z0-9])?$"
REGION_PATTERN = r"^[a-z]+-[a-z]+[0-9]+$"
PROJECT_PATTERN = r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$"
ACCOUNT_ID_PATTERN = r"^[a-z](?:[-a-z0-9]{4,28}[a-z0-9])$"
# A service account id (this project's, created and granted by deploy) or any account's email.
BUILD_ACCOUNT_PATTERN = r"^(?:[a-z][-a-z0-9]{4,28}[a-z0-9]|[^@\s]+@[^@\s]+\.gserviceaccount\.com)$"
BUILD_ACCOUNT_HELP = (
    "Cloud Build's service account: an account id deploy creates and grants only what a build "
    "needs (read the staged source, push to the repository, write logs), or the email of an "
    "account you manage, used as it is (e.g. PROJECT_NUMBER-compute@developer.gserviceaccount.com,"
    " which needs those roles)"
)
REPOSITORY_PATTERN = r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$"
IMAGE_NAME_PATTERN = r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$"
MEMORY_PATTERN = r"^[1-9][0-9]*(Mi|Gi)$"
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*(?::[A-Za-z0-9._-]+)?$"


def resolve_regions(region: str, regions: list[str], region_given: bool) -> list[str]:
    """The regions to act in: ``regions``, or ``[region]`` (the one-region shorthand) when
    ``regions`` is empty. Both given: ``region`` must be ``regions[0]`` (the first region, which
    also holds the Artifact Registry repository), else a ``ValueError`` naming both."""
    if not regions:
        return [region]
    bad = [r for r in regions if not re.fullmatch(REGION_PATTERN, r)]
    if bad:
        raise ValueError(f"regions: {bad} do not look like regions (like us-central1)")
    twice = sorted({r for r in regions if regions.count(r) > 1})
    if twice:
        raise ValueError(f"regions: {twice} named more than once")
    if region_given and region != regions[0]:
        raise ValueError(
            f"region={region!r} and regions={regions} disagree: region is the one-region "
            f"shorthand; give regions alone, or region equal to its first ({regions[0]!r})"
        )
    return list(regions)


def memory_gib(memory: str) -> float:
    """``32Gi`` → 32.0, ``16384Mi`` → 16.0."""
    match = re.fullmatch(MEMORY_PATTERN, memory)
    if not match:
        raise ValueError(f"memory must look like 32Gi or 16384Mi, got {memory!r}")
    value = int(memory[:-2])
    return float(value) if match.group(1) == "Gi" else value / 1024


def label_value(text: str) -> str:
    """A Google label value: lowercase letters, digits, ``-`` and ``_``, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def is_managed(labels: Mapping[str, str]) -> bool:
    """Whether a resource carries ``managed-by=ollama-cloudrun`` (this project made it)."""
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def unmanaged_message(kind: str, name: str, *, deleting: bool = False) -> str:
    """The one refusal text for a resource this project did not make."""
    override = "force=True deletes it anyway" if deleting else "adopt=True takes it over"
    return (
        f"{kind} {name} exists but is not labelled {MANAGED_BY_LABEL}={MANAGED_BY_VALUE}: "
        f"ollama-cloudrun did not create it, so it leaves it untouched ({override}; or choose "
        "another name)."
    )


def managed_labels(deployment: str, owner: str, run_name: str | None = None) -> dict[str, str]:
    """The labels of everything this project creates: managed-by, the deployment (service) it
    belongs to, its owner (the Prefect deployment or flow that made it) and the flow run."""
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        DEPLOYMENT_LABEL: label_value(deployment),
        OWNER_LABEL: label_value(owner),
    }
    if run_name:
        labels[RUN_LABEL] = label_value(run_name)
    return labels


class ServiceSpec(BaseModel):
    """The Cloud Run service: the tutorial's settings as typed, validated defaults."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(
        default="ollama-gemma",
        pattern=SERVICE_ID_PATTERN,
        description="Cloud Run service id (lowercase letters, digits, hyphens; < 50 characters)",
    )
    region: str = Field(
        default="us-central1", pattern=REGION_PATTERN, description="Cloud Run region"
    )
    model: str = Field(
        default="gemma2:9b", pattern=MODEL_PATTERN, description="Ollama model baked into the image"
    )
    cpu: int = Field(default=8, ge=1, le=8, description="vCPUs per instance (--cpu)")
    memory: str = Field(
        default="32Gi", pattern=MEMORY_PATTERN, description="memory per instance (--memory)"
    )
    gpu: int = Field(default=1, ge=0, le=1, description="GPUs per instance (--gpu)")
    gpu_type: Literal["nvidia-l4"] = Field(
        default="nvidia-l4", description="accelerator (--gpu-type)"
    )
    gpu_zonal_redundancy: bool = Field(
        default=False,
        description="reserve GPU zonal redundancy (the tutorial's flags keep it on; off here to "
        "save cost: about $1.42/h instead of $1.80/h per instance)",
    )
    concurrency: int = Field(
        default=4, ge=1, le=1000, description="requests per instance (--concurrency)"
    )
    num_parallel: int = Field(default=4, ge=1, le=64, description="OLLAMA_NUM_PARALLEL")
    max_instances: int = Field(default=7, ge=1, le=1000, description="--max-instances")
    timeout_seconds: int = Field(
        default=600, ge=1, le=3600, description="request timeout (--timeout)"
    )
    cpu_throttling: bool = Field(
        default=False,
        description="throttle CPU between requests (GPU services need --no-cpu-throttling)",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="container port")

    @property
    def memory_gib(self) -> float:
        return memory_gib(self.memory)

    @model_validator(mode="after")
    def _check_cloud_run_rules(self) -> Self:
        problems: list[str] = []
        if self.gpu:
            if self.cpu < 4:
                problems.append(f"a GPU service needs at least 4 CPU (cpu={self.cpu})")
            if self.memory_gib < 16:
                problems.append(f"a GPU service needs at least 16Gi memory (memory={self.memory})")
            if self.cpu_throttling:
                problems.append("a GPU service needs CPU always allocated (cpu_throttling=False)")
            if (region_problem := l4_region_problem(self.region)) is not None:
                problems.append(region_problem)
        if self.concurrency > 2 * self.num_parallel:
            problems.append(
                f"concurrency {self.concurrency} > 2 × OLLAMA_NUM_PARALLEL ({self.num_parallel}): "
                "requests would queue inside Ollama; raise num_parallel or lower concurrency"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class GoogleCloudTarget(BaseModel):
    """Where to act and with which credentials (ADC unless a GcpCredentials block is named)."""

    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(
        default=None,
        pattern=PROJECT_PATTERN,
        description="Google Cloud project id (default: the credentials' or GOOGLE_CLOUD_PROJECT)",
    )
    credentials_block: str | None = Field(
        default=None, description="name of a prefect-gcp GcpCredentials block (default: ADC)"
    )
