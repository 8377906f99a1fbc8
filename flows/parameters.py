"""The flows' parameter models: pydantic only, so the CLI builds its options without Prefect.

One model per flow (the Prefect UI renders it as a form); the flow modules import them from here.
Deploy's defaults are the values of Google's "Ollama on Cloud Run GPUs" tutorial (tasks.models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.models import (
    ACCOUNT_ID_PATTERN,
    IMAGE_NAME_PATTERN,
    REGION_PATTERN,
    REPOSITORY_PATTERN,
    SERVICE_ID_PATTERN,
    GoogleCloudTarget,
    ServiceSpec,
)

MachineType = Literal["E2_HIGHCPU_32", "E2_HIGHCPU_8", "N1_HIGHCPU_32", "N1_HIGHCPU_8", "E2_MEDIUM"]
# DESIGN §5: us-central1 prices seen for 2026 (secondary sources): an assumption, so parameters.
L4_USD_PER_SECOND = 0.0001867  # without zonal redundancy
L4_ZONAL_REDUNDANCY_USD_PER_SECOND = 0.0002909
VCPU_USD_PER_SECOND = 0.000018
MEMORY_GIB_USD_PER_SECOND = 0.000002


class DeployParameters(ServiceSpec, GoogleCloudTarget):
    """Everything ``deploy`` needs; defaults are the tutorial's."""

    repository: str = Field(
        default="ollama", pattern=REPOSITORY_PATTERN, description="Artifact Registry repository"
    )
    image: str = Field(default="ollama-gemma", pattern=IMAGE_NAME_PATTERN, description="image name")
    source_dir: str | None = Field(
        default=None, description="build context (default: ollama-backend/)"
    )
    build_machine_type: MachineType = Field(
        default="E2_HIGHCPU_32", description="Cloud Build machine type"
    )
    build_timeout_seconds: int = Field(
        default=3600, ge=60, le=86400, description="Cloud Build timeout"
    )
    service_account_id: str = Field(
        default="ollama",
        pattern=ACCOUNT_ID_PATTERN,
        description="runtime service account id (no roles)",
    )
    invoker: str | None = Field(
        default=None,
        pattern=r"^(user|serviceAccount|group):[^@\s]+@[^@\s]+$",
        description="member granted roles/run.invoker (default: the caller's own identity)",
    )
    ready_timeout_seconds: float = Field(
        default=1800.0, gt=0, description="wait for the service to be ready"
    )
    run_smoke_test: bool = Field(default=True, description="smoke-test the service after deploying")

    @property
    def spec(self) -> ServiceSpec:
        return ServiceSpec(**{k: getattr(self, k) for k in ServiceSpec.model_fields})

    @property
    def context(self) -> Path:
        if self.source_dir:
            return Path(self.source_dir)
        from tasks.cloud_build import BUILD_CONTEXT  # here: it loads the Cloud Build client

        return BUILD_CONTEXT


class SmokeTestParameters(GoogleCloudTarget):
    """Which service to test and how."""

    service: str = Field(
        default="ollama-gemma", pattern=SERVICE_ID_PATTERN, description="Cloud Run service id"
    )
    region: str = Field(
        default="us-central1", pattern=REGION_PATTERN, description="Cloud Run region"
    )
    model: str | None = Field(
        default=None,
        description="model expected in /api/tags (default: the one the deploy recorded)",
    )
    prompt: str = Field(
        default="Why is the sky blue?", min_length=1, description="prompt for the sample"
    )
    num_predict: int = Field(default=32, ge=1, le=4096, description="tokens to generate")
    start_timeout_seconds: float = Field(
        default=300.0, gt=0, description="how long to wait for the first instance (cold start)"
    )


class TeardownParameters(GoogleCloudTarget):
    """One deployment to delete, or (``sweep``) everything managed and older than ``ttl_hours``."""

    service: str = Field(
        default="ollama-gemma", pattern=SERVICE_ID_PATTERN, description="Cloud Run service id"
    )
    region: str = Field(
        default="us-central1", pattern=REGION_PATTERN, description="region of the deployment"
    )
    repository: str = Field(
        default="ollama", pattern=REPOSITORY_PATTERN, description="Artifact Registry repository"
    )
    service_account_id: str = Field(
        default="ollama", pattern=ACCOUNT_ID_PATTERN, description="runtime service account id"
    )
    sweep: bool = Field(
        default=False, description="delete every managed resource older than ttl_hours"
    )
    ttl_hours: float = Field(
        default=24.0, ge=0, description="sweep: minimum age of what is deleted"
    )
    regions: list[str] = Field(
        default_factory=lambda: ["us-central1"], description="sweep: regions to search"
    )


class BatchParams(BaseModel):
    """Parameters of ``batch_inference`` (one model, so the Prefect UI renders a form)."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(
        min_length=1,
        description="Prompts: gs://bucket/path or a local path; one file, a prefix/directory or a "
        "glob (*.jsonl). JSONL (prompt or messages; optional id, system, options, format), "
        "OpenAI batch lines (custom_id, body) or .txt (one prompt a line).",
    )
    output: str = Field(
        min_length=1, description="Output prefix: gs://bucket/path or a local directory."
    )
    target: str = Field(
        "ollama-gemma",
        description="A Cloud Run service name (uri, max instances and concurrency are read from "
        "Cloud Run) or a base URL (http[s]://host:port).",
    )
    api: Literal["ollama", "openai"] = Field(
        "ollama",
        description="ollama: native /api/generate and /api/chat; openai: /v1/chat/completions.",
    )
    model: str = Field("gemma2:9b", min_length=1, description="Model name sent with every request.")
    project: str | None = Field(
        None, description="Google Cloud project (default: from credentials)."
    )
    region: str = Field("us-central1", min_length=1, description="Cloud Run region of the service.")
    credentials_block: str | None = Field(
        None, description="A prefect-gcp GcpCredentials block name."
    )
    in_flight: int | None = Field(
        None, ge=1, le=4096, description="Requests in flight; default max instances × concurrency."
    )
    max_retries: int = Field(
        5, ge=0, le=50, description="Retries of a transient failure per prompt."
    )
    shard_size: int = Field(
        1000, ge=1, le=1_000_000, description="Prompts per shard task and output shard."
    )
    retry_errors: bool = Field(False, description="Send ids that have an error record again.")
    # One JSON body per prompt: one parse instead of one per token, and errors still arrive with
    # their HTTP status. Streaming is there for servers that cut long non-streamed requests.
    stream: bool = Field(
        False, description="Stream responses (Ollama API); off: one JSON body per prompt."
    )
    request_timeout_seconds: float = Field(
        900.0,
        gt=0,
        le=3600,
        description="Per attempt (and read) timeout; Cloud Run allows ≤ 3600 s.",
    )
    backoff_initial_seconds: float = Field(
        0.5, ge=0, le=60, description="First retry back-off (jittered)."
    )
    backoff_max_seconds: float = Field(30.0, ge=0, le=600, description="Longest retry back-off.")
    max_line_bytes: int = Field(
        1_048_576, ge=64, le=64 * 1_048_576, description="Longer input lines become error records."
    )
    id_token: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Send Google ID tokens: auto = for Cloud Run services and *.run.app URLs.",
    )
    l4_usd_per_second: float = Field(
        L4_USD_PER_SECOND, ge=0, description="Assumed L4 price per second (no zonal redundancy)."
    )
    l4_zonal_redundancy_usd_per_second: float = Field(
        L4_ZONAL_REDUNDANCY_USD_PER_SECOND,
        ge=0,
        description="Assumed L4 price with zonal redundancy.",
    )
    vcpu_usd_per_second: float = Field(
        VCPU_USD_PER_SECOND, ge=0, description="Assumed vCPU-second price."
    )
    memory_gib_usd_per_second: float = Field(
        MEMORY_GIB_USD_PER_SECOND, ge=0, description="Assumed GiB-second price."
    )
    progress_interval_seconds: float = Field(
        3.0, ge=0.5, le=600, description="Least time between progress artifact updates."
    )

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        # Here, not at import: tasks.batch.target loads the Cloud Run client, and the CLI's help
        # imports this module.
        from tasks.batch.target import SERVICE_ID_RE, is_url

        if not is_url(value) and not SERVICE_ID_RE.match(value):
            raise ValueError(
                "must be an http(s):// URL or a Cloud Run service name (lowercase letters, digits "
                "and '-', starting with a letter)"
            )
        return value

    @field_validator("input", "output")
    @classmethod
    def _location(cls, value: str) -> str:
        if "://" in value and not value.startswith("gs://"):
            raise ValueError("must be gs://bucket/path or a local path")
        if value.startswith("gs://") and len(value.rstrip("/")) <= len("gs://"):
            raise ValueError("gs:// location needs a bucket")
        return value


class PipelineParameters(DeployParameters):
    """The deploy parameters (the tutorial's defaults) plus where the prompts and results are."""

    input: str = Field(
        min_length=1,
        description="Prompts: gs://bucket/path or a local path; one file, a prefix or a glob "
        "(JSONL with prompt or messages, OpenAI batch lines, or .txt).",
    )
    output: str = Field(
        min_length=1, description="Results prefix: gs://bucket/path or a local directory."
    )
    teardown: bool = Field(
        True,
        description="Delete the service, images, staging objects and service account at the "
        "end (and, through the automation, after a failure or crash). False keeps a long-lived "
        "service.",
    )
    in_flight: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Batch requests in flight; default max instances × concurrency.",
    )
    shard_size: int = Field(1000, ge=1, le=1_000_000, description="Prompts per shard task.")
    max_retries: int = Field(
        5, ge=0, le=50, description="Retries of a transient failure per prompt."
    )
    retry_errors: bool = Field(False, description="Send ids that have an error record again.")

    @model_validator(mode="after")
    def _batch_is_valid(self) -> Self:
        self.batch_parameters()  # input/output rules live in BatchParams: fail before any call
        return self

    def deploy_parameters(self) -> DeployParameters:
        return DeployParameters.model_validate(
            {k: getattr(self, k) for k in DeployParameters.model_fields}
        )

    def batch_parameters(self) -> BatchParams:
        return BatchParams.model_validate(
            {
                "input": self.input,
                "output": self.output,
                "target": self.service,
                "model": self.model,
                "project": self.project,
                "region": self.region,
                "credentials_block": self.credentials_block,
                "in_flight": self.in_flight,
                "shard_size": self.shard_size,
                "max_retries": self.max_retries,
                "retry_errors": self.retry_errors,
            }
        )

    def teardown_parameters(self) -> TeardownParameters:
        return TeardownParameters.model_validate(
            {
                "project": self.project,
                "credentials_block": self.credentials_block,
                "service": self.service,
                "region": self.region,
                "repository": self.repository,
                "service_account_id": self.service_account_id,
            }
        )
