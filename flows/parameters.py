"""The flows' parameter models: pydantic only, so the CLI builds its options without Prefect.

One model per flow (the Prefect UI renders it as a form); the flow modules import them from here.
Deploy's defaults are the values of Google's "Ollama on Cloud Run GPUs" tutorial (tasks.models).
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.batch.params import BatchParams, BatchSettings
from tasks.models import (
    ACCOUNT_ID_PATTERN,
    BUILD_ACCOUNT_HELP,
    BUILD_ACCOUNT_PATTERN,
    IMAGE_NAME_PATTERN,
    INVOKER_PROPAGATION_HELP,
    INVOKER_PROPAGATION_TIMEOUT_SECONDS,
    REGION_PATTERN,
    REPOSITORY_PATTERN,
    SERVICE_ACCOUNT_PROPAGATION_TIMEOUT_SECONDS,
    SERVICE_ID_PATTERN,
    GoogleCloudTarget,
    ServiceSpec,
    resolve_regions,
)

MachineType = Literal["E2_HIGHCPU_32", "E2_HIGHCPU_8", "N1_HIGHCPU_32", "N1_HIGHCPU_8", "E2_MEDIUM"]


class DeployParameters(ServiceSpec, GoogleCloudTarget):
    """Everything ``deploy`` needs; defaults are the tutorial's.

    ``regions``: one service per region, all running the one image, built once into the
    repository in the first region (a Cloud Run service pulls from any region's registry).
    ``region`` alone is the one-region shorthand; after validation ``regions`` is never empty
    and ``region`` is its first.
    """

    regions: list[str] = Field(
        default_factory=list,
        description="Cloud Run regions, one service in each (default: [region]); the first also "
        "holds the Artifact Registry repository",
    )

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
    build_service_account: str = Field(
        default="ollama-build", pattern=BUILD_ACCOUNT_PATTERN, description=BUILD_ACCOUNT_HELP
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
    plan_only: bool = Field(
        default=False, description="only print and store the plan (flow plan); change nothing"
    )
    plan_first: bool = Field(
        default=False, description="store the plan artifact before changing anything"
    )
    require_approval: bool = Field(
        default=False,
        description="after the plan, pause until someone approves it in the UI (rejected: "
        "nothing is changed)",
    )
    approval_timeout_seconds: int = Field(
        default=3600, ge=60, le=7 * 86400, description="how long to wait for the approval"
    )
    adopt: bool = Field(
        default=False,
        description="take over a same-named service or repository this project did not create "
        "(not labelled managed-by=ollama-cloudrun); refused otherwise",
    )
    traffic_steps: list[int] = Field(
        default_factory=lambda: [100],
        description="a changed service's new revision gets no traffic until its smoke test "
        "passes on its tag URL; then these percents of traffic, one step after another (e.g. "
        "10 50 100), with a smoke test at each step below 100",
    )
    service_account_propagation_timeout_seconds: float = Field(
        default=SERVICE_ACCOUNT_PROPAGATION_TIMEOUT_SECONDS,
        ge=0,
        le=3600,
        description="how long Cloud Run's 403 actAs for a new runtime service account is retried",
    )
    invoker_propagation_timeout_seconds: float = Field(
        default=INVOKER_PROPAGATION_TIMEOUT_SECONDS,
        ge=0,
        le=3600,
        description=INVOKER_PROPAGATION_HELP,
    )

    @field_validator("traffic_steps")
    @classmethod
    def _steps_rise_to_100(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps):
            raise ValueError(f"{steps}: percents in 1..100, the last one 100")
        if any(a >= b for a, b in pairwise(steps)):
            raise ValueError(f"{steps}: each step above the one before")
        return steps

    @model_validator(mode="after")
    def _one_or_several_regions(self) -> Self:
        self.regions = resolve_regions(self.region, self.regions, "region" in self.model_fields_set)
        self.region = self.regions[0]
        for region in self.regions[1:]:
            self.spec_for(region)  # each region's own rules (L4 GPUs): fail before any call
        return self

    @property
    def manages_build_account(self) -> bool:
        """Whether deploy creates the build's account and grants its roles (an id, not an email)."""
        return "@" not in self.build_service_account

    @property
    def spec(self) -> ServiceSpec:
        """The service in the first region."""
        return ServiceSpec(**{k: getattr(self, k) for k in ServiceSpec.model_fields})

    def spec_for(self, region: str) -> ServiceSpec:
        """The service in ``region`` (validated: ValueError for a region without L4 GPUs)."""
        return ServiceSpec(**{**self.spec.model_dump(), "region": region})

    def for_region(self, region: str) -> Self:
        """These parameters for ``region`` alone."""
        self.spec_for(region)
        return self.model_copy(update={"region": region, "regions": [region]})

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
    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="test this URL (a revision tag's) instead of the service's; the ID token's "
        "audience stays the service URL",
    )
    invoker_propagation_timeout_seconds: float = Field(
        default=INVOKER_PROPAGATION_TIMEOUT_SECONDS,
        ge=0,
        le=3600,
        description=INVOKER_PROPAGATION_HELP,
    )


class TeardownParameters(GoogleCloudTarget):
    """One deployment to delete, or (``sweep``) every managed resource idle for ``idle_hours``."""

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
    build_service_account: str = Field(
        default="ollama-build",
        pattern=BUILD_ACCOUNT_PATTERN,
        description="Cloud Build's service account: an id is deleted (deploy made it), an email "
        "is left alone",
    )
    sweep: bool = Field(
        default=False,
        description="delete every managed resource idle for idle_hours (or past its expires-at)",
    )
    idle_hours: float = Field(
        default=24.0,
        ge=1,
        description="sweep: hours without a deploy, smoke test, batch or request before a "
        "service (then its repository and service account) is deleted",
    )
    regions: list[str] = Field(
        default_factory=list,
        description="regions of the deployment (its first holds the repository), or for the "
        "sweep the regions to search (default: [region])",
    )
    force: bool = Field(
        default=False,
        description="delete the named service, repository and service account even when this "
        "project did not create them (no managed-by=ollama-cloudrun label); refused otherwise",
    )

    @model_validator(mode="after")
    def _one_or_several_regions(self) -> Self:
        self.regions = resolve_regions(self.region, self.regions, "region" in self.model_fields_set)
        self.region = self.regions[0]
        return self


class CheckParameters(GoogleCloudTarget):
    """Where to look for managed services."""

    regions: list[str] = Field(
        default_factory=lambda: ["us-central1"], description="regions to check"
    )


class PipelineParameters(DeployParameters, BatchSettings):
    """The deploy parameters (the tutorial's defaults), the batch settings (where the prompts and
    results are, how they are sent) and whether the run owns its service."""

    teardown: bool = Field(
        True,
        description="Delete the service, images, staging objects and service account at the "
        "end (and, through the automation, after a failure or crash). False keeps a long-lived "
        "service.",
    )

    @model_validator(mode="after")
    def _batch_is_valid(self) -> Self:
        self.batch_parameters()  # the batch's own rules (e.g. its target): fail before any call
        return self

    def deploy_parameters(self) -> DeployParameters:
        return DeployParameters.model_validate(
            {k: getattr(self, k) for k in DeployParameters.model_fields}
        )

    def batch_parameters(self, regions: list[str] | None = None) -> BatchParams:
        """The batch settings as given, sent to the service this pipeline deploys in each of
        ``regions`` (default: all its regions): several regions are several targets, sharing the
        prompts in proportion to their slots (one region: the service name, as before)."""
        regions = regions or self.regions or [self.region]
        targets = [f"{region}/{self.service}" for region in regions]
        return BatchParams.model_validate(
            {
                **{k: getattr(self, k) for k in BatchSettings.model_fields},
                "target": self.service if len(regions) == 1 else targets,
                "model": self.model,
                "project": self.project,
                "region": regions[0],
                "credentials_block": self.credentials_block,
                "invoker_propagation_timeout_seconds": self.invoker_propagation_timeout_seconds,
            }
        )

    def teardown_parameters(self) -> TeardownParameters:
        return TeardownParameters.model_validate(
            {
                "project": self.project,
                "credentials_block": self.credentials_block,
                "service": self.service,
                "region": self.region,
                "regions": self.regions,
                "repository": self.repository,
                "service_account_id": self.service_account_id,
                "build_service_account": self.build_service_account,
            }
        )


class ResultsParams(BaseModel):
    """Which batch output to collect, and where to."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(
        min_length=1, description="The batch's output prefix: gs://bucket/path or a directory."
    )
    to: str | None = Field(
        None, description="Where to write: a path or gs://... (default <output>/final/...)."
    )
    format: Literal["auto", "native", "openai"] = Field(
        "auto",
        description="native: the records as stored; openai: OpenAI's batch output and error "
        "files; auto: openai when the input was OpenAI batch lines.",
    )
    order: Literal["output", "input"] = Field(
        "output", description="output: as stored; input: in the order of the run's input."
    )
    project: str | None = Field(None, description="Google Cloud project (default: credentials).")
    credentials_block: str | None = Field(
        None, description="A prefect-gcp GcpCredentials block name."
    )

    @field_validator("output", "to")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and not value.startswith("gs://"):
            raise ValueError("must be gs://bucket/path or a local path")
        return value

    @property
    def uses_gcs(self) -> bool:
        return self.output.startswith("gs://") or (self.to or "").startswith("gs://")


Workers = Annotated[
    int,
    Field(
        ge=1,
        description="Prefect workers to share the batch: N > 1 splits the planned shards into N "
        "flow runs of the batch-shard deployment, run by the workers of its work pool (the "
        "deployment and its pool must exist: ./dev stack has both).",
    ),
]


class BatchRunOptions(BaseModel):
    """``batch_inference``'s parameters besides ``params`` (the ``batch`` command's options)."""

    model_config = ConfigDict(extra="forbid")

    workers: Workers = 1
