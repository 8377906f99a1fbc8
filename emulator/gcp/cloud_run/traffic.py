"""Cloud Run traffic: a service's `traffic` targets checked, resolved to revisions, and reported
as `traffic_statuses`. Pure.

Shapes and rules from the Cloud Run Admin API v2 reference (discovery document run.v2:
`GoogleCloudRunV2TrafficTarget`, `GoogleCloudRunV2TrafficTargetStatus`, `Service.traffic`: "If
traffic is empty or not provided, defaults to 100% traffic to the latest `Ready` Revision") and
from Knative Serving, whose route Cloud Run's v2 surface reports (pkg/apis/serving/v1
route_validation.go: percents must sum to 100, a tag is named once, a target names either a
revision or the latest one). A LATEST target resolves to the latest ready revision, and its
status names it, as Knative's `status.traffic[].revisionName` does.

A tag gets its own URL. On Cloud Run that is `https://TAG---SERVICE-HASH-REGION.a.run.app`
(https://cloud.google.com/run/docs/rollouts-rollbacks-traffic-migration#tags); the emulator
serves each service URL on its own 127.0.0.1 port, so each tag URL is its own port too, routed
to the tagged revision only.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from google.cloud import run_v2

from emulator.gcp.errors import invalid_argument

LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
# A tag is a DNS label prefix of the tag URL (`TAG---SERVICE-...`); gcloud: "--tag must be
# lowercase letters, digits and dashes, starting with a letter".
TAG = re.compile(r"^[a-z]([-a-z0-9]{0,44}[a-z0-9])?$")


@dataclass(frozen=True)
class Resolved:
    """One traffic target with its revision named (LATEST resolved)."""

    type_: run_v2.TrafficTargetAllocationType
    revision: str
    percent: int
    tag: str


def check_traffic(
    traffic: Sequence[run_v2.TrafficTarget], known: Collection[str], creating: str
) -> None:
    """Google's checks on `traffic`: INVALID_ARGUMENT naming the first problem. `known` are
    the service's revisions; `creating` the revision this update makes ("" when none)."""
    total = 0
    tags: set[str] = set()
    for i, target in enumerate(traffic):
        where = f"spec.traffic[{i}]"
        if not 0 <= target.percent <= 100:
            raise invalid_argument(
                f"{where}.percent: expected 0 <= {target.percent} <= 100: Invalid value"
            )
        total += target.percent
        if target.type_ == REVISION:
            if not target.revision:
                raise invalid_argument(f"{where}.revision: a revision must be named.")
            if target.revision not in known and target.revision != creating:
                # Cloud Run's text, as a Terraform user quotes it
                # (terraform-google-modules/terraform-docs-samples#269).
                raise invalid_argument(
                    f"Revision '{target.revision}' does not exist or is deleted. Update all "
                    "traffic to route to currently available revisions."
                )
        elif target.type_ == LATEST:
            if target.revision:
                raise invalid_argument(
                    f"{where}: a LATEST target may not name a revision: expected exactly one, "
                    "got both"
                )
        else:
            raise invalid_argument(f"{where}.type: must be LATEST or REVISION.")
        if target.tag:
            if not TAG.match(target.tag):
                raise invalid_argument(
                    f"{where}.tag: Invalid value '{target.tag}': must be lowercase letters, "
                    "digits and dashes, start with a letter and be at most 46 characters."
                )
            if target.tag in tags:
                raise invalid_argument(f'Multiple definitions for "{target.tag}": spec.traffic')
            tags.add(target.tag)
    if traffic and total != 100:
        raise invalid_argument(f"spec.traffic: Traffic targets sum to {total}, want 100")


def resolve(traffic: Sequence[run_v2.TrafficTarget], latest_ready: str) -> list[Resolved]:
    """Each target with its revision named; LATEST is the latest ready revision."""
    return [
        Resolved(
            t.type_,
            latest_ready if t.type_ == LATEST else t.revision,
            t.percent,
            t.tag,
        )
        for t in traffic
    ]


def routed(resolved: Sequence[Resolved]) -> set[str]:
    """The revisions that can receive requests: some percent, or a tag."""
    return {r.revision for r in resolved if r.revision and (r.percent or r.tag)}


def statuses(
    resolved: Sequence[Resolved], tag_urls: dict[str, str]
) -> list[run_v2.TrafficTargetStatus]:
    return [
        run_v2.TrafficTargetStatus(
            type_=r.type_,
            revision=r.revision,
            percent=r.percent,
            tag=r.tag,
            uri=tag_urls.get(r.tag, "") if r.tag else "",
        )
        for r in resolved
    ]
