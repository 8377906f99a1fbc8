"""The cost model: instance-seconds × the list price of one instance (DESIGN §5).

Two figures. The **estimate** is a lower bound from list prices and the instances the run kept
busy. The **billed** figure (``BilledCost``, read by ``tasks.batch.billing``) is Cloud Run's own
billable instance time from Cloud Monitoring over the run's window plus the idle tail, at the
same prices: it is ``provisional`` until a read made after the tail and the metrics delay, then
``final``.

Prices: Cloud Run pricing, https://cloud.google.com/run/pricing, Tier 1 (us-central1), "Services
with CPU always allocated" (instance-based billing, which GPU services require): $0.000018 per
vCPU-second (the page), $0.000002 per GiB-second; the NVIDIA L4 per-second prices with and
without zonal redundancy as seen for 2026 in secondary sources. An assumption, so parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the CLI's help imports the parameter models: no Cloud Run client then
    from tasks.batch.target import Target

L4_USD_PER_SECOND = 0.0001867  # without zonal redundancy
L4_ZONAL_REDUNDANCY_USD_PER_SECOND = 0.0002909
VCPU_USD_PER_SECOND = 0.000018
MEMORY_GIB_USD_PER_SECOND = 0.000002
# Cloud Run keeps an idle instance up to ~15 minutes before scale-in; instance-based billing
# bills it all (https://cloud.google.com/run/docs/configuring/billing-settings).
IDLE_TAIL_SECONDS = 900.0
# Cloud Run's metrics are "sampled every 60 seconds. After sampling, data is not visible for up
# to 180 seconds." (Google's metric list, run.googleapis.com/container/billable_instance_time).
METRICS_DELAY_SECONDS = 240.0


class PriceAssumptions(BaseModel):
    """Assumed prices per second of one Cloud Run instance's parts, and when billing is final."""

    model_config = ConfigDict(extra="forbid")

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
    idle_tail_seconds: float = Field(
        IDLE_TAIL_SECONDS,
        ge=0,
        le=86400,
        description="How long Cloud Run keeps (and bills) an idle instance after the last "
        "request; the billed figure's window ends this long after the run.",
    )
    metrics_delay_seconds: float = Field(
        METRICS_DELAY_SECONDS,
        ge=0,
        le=3600,
        description="Cloud Monitoring shows a sample this long after it: a billed figure read "
        "this long after its window is final.",
    )
    await_billed: bool = Field(
        False,
        description="After the run, wait out the idle tail and the metrics delay and write the "
        "final billed cost; otherwise the next run on this output finalizes it.",
    )


def per_unit(usd: float | None, count: int, per: int) -> float | None:
    """USD per ``per`` units (1,000 prompts, 1M output tokens); None when nothing was counted."""
    return None if usd is None or count <= 0 else round(usd * per / count, 6)


class BilledCost(BaseModel):
    """Cloud Run's billable instance time over the run's window, priced. ``status``: ``final``
    (read after ``final_after``), ``provisional`` (read earlier: the idle tail and the metrics
    delay may still add to it) or ``unavailable`` (``note`` says why)."""

    status: Literal["provisional", "final", "unavailable"]
    metric: str = "run.googleapis.com/container/billable_instance_time"
    run: str
    project: str
    region: str
    service: str
    instance_seconds: float | None = None
    usd: float | None = None
    usd_per_instance_second: float
    usd_per_1k_prompts: float | None = None
    usd_per_1m_output_tokens: float | None = None
    prompts: int
    output_tokens: int
    window_start: str  # the run's start
    run_end: str
    window_end: str  # run end + the idle tail
    final_after: str  # window end + the metrics delay: a read from then on is final
    read_at: str | None = None
    note: str = ""


class CostEstimate(BaseModel):
    instance_seconds: float
    usd: float
    assumption: str
    usd_per_1k_prompts: float | None = None
    usd_per_1m_output_tokens: float | None = None
    billed: list[BilledCost] = []  # Cloud Run's billed figure, one per Cloud Run target
    earlier_runs_billed: list[BilledCost] = []  # earlier runs' figures this run made final


def with_per_unit(cost: CostEstimate, prompts: int, output_tokens: int) -> CostEstimate:
    """``cost`` with its cost per 1,000 prompts and per 1M output tokens."""
    return cost.model_copy(
        update={
            "usd_per_1k_prompts": per_unit(cost.usd, prompts, 1000),
            "usd_per_1m_output_tokens": per_unit(cost.usd, output_tokens, 1_000_000),
        }
    )


def instance_price(prices: PriceAssumptions, target: Target) -> tuple[float, float]:
    """One instance's list price per second, and the L4 price in it (zonal redundancy or not)."""
    gpu_price = (
        prices.l4_zonal_redundancy_usd_per_second
        if target.gpu_zonal_redundancy
        else prices.l4_usd_per_second
    )
    per_second = (
        target.gpus * gpu_price
        + target.cpu * prices.vcpu_usd_per_second
        + target.memory_gib * prices.memory_gib_usd_per_second
    )
    return (per_second if target.service is not None else 0.0), gpu_price


def estimate_cost(
    prices: PriceAssumptions,
    target: Target,
    instance_seconds: float,
    prompts: int = 0,
    output_tokens: int = 0,
) -> CostEstimate:
    """The run's GPU cost, a lower bound (busy instances only), with the assumption spelt out."""
    per_second, gpu_price = instance_price(prices, target)
    assumption = (
        f"instance-seconds (lower bound: busy instances = ceil(in flight / {target.concurrency}), "
        f"at most {target.max_instances}; idle instances kept warm are not counted) × "
        f"${per_second:.7f}/s per instance = {target.gpus} × L4 ${gpu_price}/s "
        f"({'with' if target.gpu_zonal_redundancy else 'without'} zonal redundancy) + "
        f"{target.cpu:g} vCPU × ${prices.vcpu_usd_per_second}/s + {target.memory_gib:g} GiB × "
        f"${prices.memory_gib_usd_per_second}/s; us-central1 list prices (cloud.google.com/run/"
        "pricing; L4 from secondary sources), an assumption"
        + ("" if target.service else "; target is a plain URL, so no Cloud Run cost")
    )
    usd = round(instance_seconds * per_second, 6)
    return CostEstimate(
        instance_seconds=round(instance_seconds, 2),
        usd=usd,
        assumption=assumption,
        usd_per_1k_prompts=per_unit(usd, prompts, 1000),
        usd_per_1m_output_tokens=per_unit(usd, output_tokens, 1_000_000),
    )
