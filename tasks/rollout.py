"""Canary rollout on Cloud Run: a changed service's new revision starts with no traffic and the tag
``candidate``; it is tested on the tag's URL, then traffic moves to it (in steps, if asked).

What Cloud Run documents as "Rollbacks, gradual rollouts, and traffic migration"
(https://cloud.google.com/run/docs/rollouts-rollbacks-traffic-migration): ``gcloud run deploy
--no-traffic --tag candidate`` names the new revision and pins the traffic to the revisions that
serve; ``gcloud run services update-traffic`` moves it. Over Cloud Run Admin v2 that is one
``services.patch`` with ``template.revision`` and ``traffic`` (the revision is made, the traffic
does not move), then ``services.patch`` with ``updateMask=traffic`` (no new revision).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from google.cloud import run_v2
from google.protobuf import field_mask_pb2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.errors import ConfigurationError, google_errors
from tasks.retries import consistency_retry

CANDIDATE_TAG = "candidate"
OPERATION_TIMEOUT_SECONDS = 1800.0
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


@dataclass(frozen=True)
class Share:
    """A revision and its percent of the service's traffic."""

    revision: str
    percent: int

    def __str__(self) -> str:
        return f"{self.revision} ({self.percent} %)"


def restorable(previous: run_v2.Service) -> run_v2.Service:
    """The user-settable part of a Service as read back, to send it again (rollback)."""
    return run_v2.Service(
        name=previous.name,
        description=previous.description,
        labels=dict(previous.labels),
        annotations=dict(previous.annotations),
        client=previous.client,
        ingress=previous.ingress,
        launch_stage=previous.launch_stage,
        invoker_iam_disabled=previous.invoker_iam_disabled,
        template=previous.template,
        traffic=list(previous.traffic),
        scaling=previous.scaling,
    )


def serving(service: run_v2.Service) -> tuple[Share, ...]:
    """Where the service's traffic goes now, by revision (a LATEST target named by its status,
    else by the latest ready revision)."""
    shares: dict[str, int] = {}
    for status in service.traffic_statuses:
        revision = status.revision or (
            service.latest_ready_revision if status.type_ == LATEST else ""
        )
        if revision and status.percent:
            shares[revision] = shares.get(revision, 0) + status.percent
    return tuple(Share(r, p) for r, p in shares.items())


def serves_latest(service: run_v2.Service) -> bool:
    """All traffic on the latest revision, and that revision ready: nothing is being rolled out."""
    latest = service.latest_created_revision
    return (
        bool(latest)
        and service.latest_ready_revision == latest
        and serving(service) == (Share(latest, 100),)
    )


def new_revision_name(service_id: str) -> str:
    """A revision name Cloud Run accepts (`<service>-<suffix>`, as ``--revision-suffix``)."""
    return f"{service_id}-{secrets.token_hex(4)}"


def pinned(shares: Sequence[Share]) -> list[run_v2.TrafficTarget]:
    return [
        run_v2.TrafficTarget(type_=REVISION, revision=s.revision, percent=s.percent) for s in shares
    ]


def candidate_traffic(shares: Sequence[Share], candidate: str) -> list[run_v2.TrafficTarget]:
    """The serving revisions keep their traffic; the candidate gets none and the tag."""
    tag = run_v2.TrafficTarget(type_=REVISION, revision=candidate, percent=0, tag=CANDIDATE_TAG)
    return [*pinned(shares), tag]


def step_traffic(
    shares: Sequence[Share], candidate: str, percent: int
) -> list[run_v2.TrafficTarget]:
    """`percent` to the candidate (tag kept), the rest over the serving revisions in their
    proportions; at 100 % the service is back to Cloud Run's default: all to the latest."""
    if percent >= 100:
        return [run_v2.TrafficTarget(type_=LATEST, percent=100)]
    rest = 100 - percent
    total = sum(s.percent for s in shares) or 100
    split = [(s.revision, s.percent * rest // total) for s in shares if s.revision != candidate]
    if split:  # rounding: the first serving revision takes what integer division left over
        first, share = split[0]
        split[0] = (first, share + rest - sum(p for _, p in split))
    targets = [run_v2.TrafficTarget(type_=REVISION, revision=r, percent=p) for r, p in split]
    targets.append(
        run_v2.TrafficTarget(type_=REVISION, revision=candidate, percent=percent, tag=CANDIDATE_TAG)
    )
    return targets


def tag_url(service: run_v2.Service, tag: str = CANDIDATE_TAG) -> str:
    """The URL Cloud Run gives a tag (``https://TAG---SERVICE-HASH-REGION.a.run.app``)."""
    for status in service.traffic_statuses:
        if status.tag == tag and status.uri:
            return str(status.uri)
    raise ConfigurationError(f"{service.name} has no URL for the tag {tag!r}")


@task(name="move-traffic", cache_policy=NO_CACHE)
def move_traffic(
    cloud: GoogleCloud, name: str, targets: Sequence[run_v2.TrafficTarget]
) -> tuple[Share, ...]:
    """``services.patch`` with ``updateMask=traffic``: traffic moves, no revision is made.
    Returns where the traffic then goes."""
    client = clients.run_services_client(cloud)
    moves = ", ".join(f"{t.revision or 'latest'} {t.percent} %" for t in targets)
    with google_errors(f"move the traffic of Cloud Run service {name} ({moves})"):
        operation = client.update_service(
            request=run_v2.UpdateServiceRequest(
                service=run_v2.Service(name=name, traffic=list(targets)),
                update_mask=field_mask_pb2.FieldMask(paths=["traffic"]),
            ),
            retry=consistency_retry(cloud),
        )
        moved = serving(operation.result(timeout=OPERATION_TIMEOUT_SECONDS))
    get_run_logger().info("Traffic of %s: %s", name, ", ".join(map(str, moved)))
    return moved
