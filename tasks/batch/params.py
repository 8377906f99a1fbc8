"""The batch's parameters: one typed model, so the Prefect UI renders a form and the command line
generates its options from it (``flows/cli.py`` flattens the sub-models: ``--in-flight``).

``BatchSettings`` is what to read, where to write and how to send; ``BatchParams`` adds where the
service is. The pipeline reuses ``BatchSettings`` and names the service itself.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.batch.cost import PriceAssumptions
from tasks.batch.target_refs import TargetRef, parse_targets, split_targets
from tasks.models import INVOKER_PROPAGATION_HELP, INVOKER_PROPAGATION_TIMEOUT_SECONDS


class EngineSettings(BaseModel):
    """How prompts are sent: the API, how many at once, retries and timeouts."""

    model_config = ConfigDict(extra="forbid")

    api: Literal["ollama", "openai"] = Field(
        "ollama",
        description="ollama: native /api/generate and /api/chat; openai: /v1/chat/completions "
        "(and /v1/completions for OpenAI batch lines that name it).",
    )
    in_flight: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Requests in flight; default max instances × concurrency (several targets: "
        "the sum of their slots, and a given value is shared in proportion to them).",
    )
    max_retries: int = Field(
        5, ge=0, le=50, description="Retries of a transient failure per prompt."
    )
    # One JSON body per prompt: one parse instead of one per token, and errors still arrive with
    # their HTTP status. Streaming is there for servers that cut long non-streamed requests.
    stream: bool = Field(
        False, description="Stream responses (Ollama API); off: one JSON body per prompt."
    )
    request_timeout_seconds: float = Field(
        900.0,
        gt=0,
        le=3600,
        description="Per attempt (and read) timeout; never more than a Cloud Run target's own "
        "request timeout (cut to it, with a log line).",
    )
    backoff_initial_seconds: float = Field(
        0.5, ge=0, le=60, description="First retry back-off (jittered)."
    )
    backoff_max_seconds: float = Field(30.0, ge=0, le=600, description="Longest retry back-off.")
    circuit_failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="A target that fails this many requests in a row (connection errors, "
        "timeouts, 5xx) gets no more until a probe succeeds; its share goes to the others.",
    )
    circuit_cooldown_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Wait before probing a target that kept failing (doubled after each failed "
        "probe, up to 60 s).",
    )


_SUB_MODELS: dict[str, type[BaseModel]] = {"engine": EngineSettings, "prices": PriceAssumptions}


class BatchSettings(BaseModel):
    """What to read, where to write and how to send (everything but the service)."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(
        min_length=1,
        description="Prompts: gs://bucket/path or a local path; one file, a prefix/directory or a "
        "glob as Cloud Storage matches it (*.jsonl stays in one directory, **.jsonl goes "
        "into subdirectories). JSONL (prompt or messages; optional id, system, options, format), "
        "OpenAI batch lines (custom_id, method, url, body) or .txt (one prompt a line).",
    )
    output: str = Field(
        min_length=1,
        description="Output prefix: gs://bucket/path or a local directory (outside the input).",
    )
    shard_size: int = Field(
        1000, ge=1, le=1_000_000, description="Prompts per shard task and output shard."
    )
    retry_errors: bool = Field(False, description="Send ids that have an error record again.")
    max_attempts_per_id: int = Field(
        3,
        ge=1,
        le=1000,
        description="With retry_errors: runs that may send one id; an id that failed in this "
        "many runs is not sent again (its records count them: tries).",
    )
    max_failed_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="The run ends Failed (after writing everything) when more than this "
        "fraction of the prompts it sent failed.",
    )
    max_failed: int | None = Field(
        None, ge=0, description="The run ends Failed when more prompts than this failed."
    )
    max_input_errors: int | None = Field(
        None,
        ge=0,
        description="The run ends Failed when more input lines than this cannot be read "
        "(default: no limit).",
    )
    max_line_bytes: int = Field(
        1_048_576, ge=64, le=64 * 1_048_576, description="Longer input lines become error records."
    )
    progress_interval_seconds: float = Field(
        3.0, ge=0.5, le=600, description="Least time between progress artifact updates."
    )
    lease_seconds: float = Field(
        300.0,
        ge=1,
        le=86400,
        description="The output's lease (one run at a time) lasts this long unless renewed; a "
        "killed run's lease is taken over once it expired.",
    )
    takeover: bool = Field(
        False, description="Take the output's lease even if another run holds it."
    )
    collect: bool = Field(
        False,
        description="At the end, write the final answer set (one record per input id) to "
        "<output>/final/ (see the results command).",
    )
    output_format: Literal["auto", "native", "openai"] = Field(
        "auto",
        description="Format of the collected answer set (collect, results command): openai = "
        "OpenAI's batch output and error files; auto: openai for OpenAI batch lines.",
    )
    engine: EngineSettings = Field(
        default_factory=lambda: EngineSettings.model_validate({}),
        description="How prompts are sent.",
    )
    prices: PriceAssumptions = Field(
        default_factory=lambda: PriceAssumptions.model_validate({}),
        description="Prices assumed for the cost estimate.",
    )

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_settings(cls, data: Any) -> Any:
        """Sub-model fields given flat (``in_flight=8``) go into their sub-model: the form of
        Python callers and of parameters saved before the sub-models existed."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, model in _SUB_MODELS.items():
            flat = {key: data.pop(key) for key in model.model_fields if key in data}
            if flat:
                given = data.get(name) or {}
                if isinstance(given, BaseModel):
                    given = given.model_dump(exclude_unset=True)
                data[name] = {**given, **flat}
        return data

    def plan_options(self) -> dict[str, Any]:
        """The keyword arguments of ``tasks.batch.plan.plan_shards``."""
        return {
            "shard_size": self.shard_size,
            "retry_errors": self.retry_errors,
            "max_line_bytes": self.max_line_bytes,
            "max_attempts_per_id": self.max_attempts_per_id,
        }

    @field_validator("input", "output")
    @classmethod
    def _location(cls, value: str) -> str:
        if "://" in value and not value.startswith("gs://"):
            raise ValueError("must be gs://bucket/path or a local path")
        if value.startswith("gs://") and len(value.rstrip("/")) <= len("gs://"):
            raise ValueError("gs:// location needs a bucket")
        return value


class BatchParams(BatchSettings):
    """Parameters of ``batch_inference``: the settings plus the service and its model."""

    target: str | list[str] = Field(
        "ollama-gemma",
        description="Where prompts go: a Cloud Run service [REGION/]NAME (uri, max instances and "
        "concurrency are read from Cloud Run) or a base URL (http[s]://host:port); several "
        "(a list or commas) share the prompts in proportion to their slots. #slots=N after one "
        "sets its slots (a URL's default: 4).",
    )
    model: str = Field("gemma2:9b", min_length=1, description="Model name sent with every request.")
    project: str | None = Field(
        None, description="Google Cloud project (default: from credentials)."
    )
    region: str = Field("us-central1", min_length=1, description="Cloud Run region of the service.")
    credentials_block: str | None = Field(
        None, description="A prefect-gcp GcpCredentials block name."
    )
    id_token: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Send Google ID tokens: auto = for Cloud Run services and *.run.app URLs.",
    )
    invoker_propagation_timeout_seconds: float = Field(
        INVOKER_PROPAGATION_TIMEOUT_SECONDS,
        ge=0,
        le=3600,
        description=INVOKER_PROPAGATION_HELP[:1].upper() + INVOKER_PROPAGATION_HELP[1:] + ".",
    )

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | list[str]) -> str | list[str]:
        """One target stays a string (as saved deployments have it); several become a list."""
        parse_targets(value, "us-central1")  # the rules; regions are filled in by ``targets``
        names = split_targets(value)
        return names[0] if len(names) == 1 else names

    @property
    def targets(self) -> list[TargetRef]:
        """Every target, parsed; a service without a region is in ``region``."""
        return parse_targets(self.target, self.region)

    @property
    def needs_cloud(self) -> bool:
        """Google Cloud credentials are needed: a gs:// location or a Cloud Run service."""
        return self.uses_gcs or any(ref.url is None for ref in self.targets)

    @property
    def uses_gcs(self) -> bool:
        return self.input.startswith("gs://") or self.output.startswith("gs://")

    def sends_id_tokens(self, ref: TargetRef) -> bool:
        """ID tokens for this target: always, never, or (auto) for services and *.run.app."""
        if self.id_token != "auto":
            return self.id_token == "always"
        return ref.url is None or ref.on_run_app
