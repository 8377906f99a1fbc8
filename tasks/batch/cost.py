"""The cost model: instance-seconds × the list price of one instance (DESIGN §5).

us-central1 prices seen for 2026 (secondary sources): an assumption, so they are parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the CLI's help imports the parameter models: no Cloud Run client then
    from tasks.batch.target import Target

L4_USD_PER_SECOND = 0.0001867  # without zonal redundancy
L4_ZONAL_REDUNDANCY_USD_PER_SECOND = 0.0002909
VCPU_USD_PER_SECOND = 0.000018
MEMORY_GIB_USD_PER_SECOND = 0.000002


class PriceAssumptions(BaseModel):
    """Assumed prices per second of one Cloud Run instance's parts."""

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


class CostEstimate(BaseModel):
    instance_seconds: float
    usd: float
    assumption: str


def estimate_cost(
    prices: PriceAssumptions, target: Target, instance_seconds: float
) -> CostEstimate:
    """The run's GPU cost, a lower bound (busy instances only), with the assumption spelt out."""
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
    if target.service is None:
        per_second = 0.0
    assumption = (
        f"instance-seconds (lower bound: busy instances = ceil(in flight / {target.concurrency}), "
        f"at most {target.max_instances}; idle instances kept warm are not counted) × "
        f"${per_second:.7f}/s per instance = {target.gpus} × L4 ${gpu_price}/s "
        f"({'with' if target.gpu_zonal_redundancy else 'without'} zonal redundancy) + "
        f"{target.cpu:g} vCPU × ${prices.vcpu_usd_per_second}/s + {target.memory_gib:g} GiB × "
        f"${prices.memory_gib_usd_per_second}/s; us-central1 list prices seen for 2026 (secondary "
        "sources), an assumption"
        + ("" if target.service else "; target is a plain URL, so no Cloud Run cost")
    )
    return CostEstimate(
        instance_seconds=round(instance_seconds, 2),
        usd=round(instance_seconds * per_second, 6),
        assumption=assumption,
    )
