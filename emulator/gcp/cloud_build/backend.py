"""Cloud Build state: builds by project, location and id, each an explicit state machine on the
emulator's clock. Knows nothing of HTTP.

QUEUED at create, WORKING after a third of `config.build_seconds`, then SUCCESS / FAILURE /
TIMEOUT at `build_seconds` (a timer finishes it even when nobody polls; polls and gets advance it
too). Cancel ends it as CANCELLED. On SUCCESS every planned image is pushed to the emulated
Artifact Registry (a missing repository fails the push: PUSH_FAILED); the build log is written
to `gs://<logsBucket or PROJECT_cloudbuild>/log-<id>.txt`.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from google.cloud.devtools import cloudbuild_v1

from emulator.gcp.artifact_registry import ArtifactRegistryBackend
from emulator.gcp.cloud_build.identity import runtime_denial
from emulator.gcp.cloud_build.plan import BuildPlan
from emulator.gcp.cloud_build.source import BuildStorage, GcsHttpStorage, fetch_and_plan
from emulator.gcp.cloud_build.spec import (
    CANCELLED,
    FAILURE,
    QUEUED,
    SUCCESS,
    TERMINAL,
    TIMEOUT,
    WORKING,
    Build,
    FailureType,
    Status,
    new_build,
    operation_error,
)
from emulator.gcp.errors import GoogleApiError, not_found
from emulator.gcp.operations import Outcome
from emulator.gcp.protojson import message_to_json, parse_message, utc
from emulator.gcp.routing import lenient_page

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


@dataclass
class BuildRecord:
    build: Build
    location: str
    operation: str
    plan: BuildPlan
    queued_at: float
    start_at: float
    finish_at: float
    timeout_at: float
    applied: bool = False

    def to_state(self) -> dict[str, Any]:
        return {
            "build": message_to_json(self.build),
            "location": self.location,
            "operation": self.operation,
            "plan": self.plan.to_state(),
            "queued_at": self.queued_at,
            "start_at": self.start_at,
            "finish_at": self.finish_at,
            "timeout_at": self.timeout_at,
            "applied": self.applied,
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> BuildRecord:
        return cls(
            build=parse_message(Build, data["build"]),
            location=data["location"],
            operation=data["operation"],
            plan=BuildPlan.from_state(data["plan"]),
            queued_at=data["queued_at"],
            start_at=data["start_at"],
            finish_at=data["finish_at"],
            timeout_at=data["timeout_at"],
            applied=data["applied"],
        )


class CloudBuildBackend:
    """Builds by project, location and id. Knows nothing of HTTP."""

    def __init__(self, emulator: Emulator, storage: BuildStorage | None = None) -> None:
        self._emulator = emulator
        self.storage: BuildStorage = storage or GcsHttpStorage(lambda: emulator.config.storage_url)
        self._builds: dict[tuple[str, str, str], BuildRecord] = {}
        self._timers: list[threading.Timer] = []
        self._closed = False

    # -- API --------------------------------------------------------------------------------

    def prepare_build(self, project: str, location: str, body: Mapping[str, Any]) -> Build:
        """A validated build, not yet queued (pure: safe outside the emulator's lock)."""
        return new_build(project, location, body)

    def fetch_and_plan(self, build: Build) -> BuildPlan:
        """Fetch the build's source over HTTP and plan its steps: run it outside the lock."""
        return fetch_and_plan(self.storage, build)

    def queue_build(self, build: Build, location: str, plan: BuildPlan) -> dict[str, Any]:
        """Queue a prepared and planned build; returns its operation's first JSON."""
        now = self._emulator.clock()  # the source fetch took time: the build is queued from here
        build.status = QUEUED
        build.create_time = utc(now)
        project, build_id = build.project_id, build.id
        seconds = self._emulator.config.build_seconds
        timeout = build.timeout.total_seconds()
        record = BuildRecord(
            build=build,
            location=location,
            operation=(
                f"operations/build/{project}/{base64.b64encode(build_id.encode()).decode()}"
                if location == "global"
                else f"projects/{project}/locations/{location}/operations/{build_id}"
            ),
            plan=plan,
            queued_at=now,
            start_at=now + seconds / 3,
            finish_at=now + seconds,
            timeout_at=now + seconds / 3 + timeout,
        )
        self._builds[(project, location, build_id)] = record
        op = self._register_operation(record)
        self._schedule(record)
        return op

    def get_build(self, project: str, location: str, build_id: str) -> Build:
        record = self._record(project, location, build_id)
        self._advance(record)
        return record.build

    def list_builds(
        self, project: str, location: str, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        records = [r for (p, loc, _), r in self._builds.items() if p == project and loc == location]
        for record in records:
            self._advance(record)
        records.sort(key=lambda r: r.queued_at, reverse=True)
        page, token = lenient_page(records, page_size, page_token)
        out: dict[str, Any] = {"builds": [message_to_json(r.build) for r in page]}
        if token:
            out["nextPageToken"] = token
        return out

    def cancel_build(self, project: str, location: str, build_id: str) -> Build:
        record = self._record(project, location, build_id)
        self._advance(record)
        if record.build.status not in TERMINAL:
            now = self._emulator.clock()
            record.build.status = CANCELLED
            record.build.finish_time = utc(now)
            if not record.build.start_time:
                record.build.start_time = utc(now)
            record.applied = True
            record.plan.log.append("CANCELLED")
            self._write_log(record)
        return record.build

    # -- state machine ------------------------------------------------------------------------

    def _record(self, project: str, location: str, build_id: str) -> BuildRecord:
        record = self._builds.get((project, location, build_id))
        if record is None:
            raise not_found(f"Requested entity was not found. (build {build_id})")
        return record

    def _register_operation(self, record: BuildRecord) -> dict[str, Any]:
        def metadata() -> cloudbuild_v1.BuildOperationMetadata:
            self._advance(record)
            return cloudbuild_v1.BuildOperationMetadata(build=record.build)

        def resolve() -> Outcome | None:
            self._advance(record)
            status = record.build.status
            if status not in TERMINAL:
                return None
            if status == Status.SUCCESS:
                return record.build, None
            return None, operation_error(record.build)

        return self._emulator.start_operation(record.operation, metadata, resolve)

    def _schedule(self, record: BuildRecord) -> None:
        delay = max(0.0, min(record.finish_at, record.timeout_at) - self._emulator.clock())
        if self._closed or delay <= 0:
            self._advance(record)
            return
        timer = threading.Timer(delay + 0.01, self._on_timer, args=(record,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _on_timer(self, record: BuildRecord) -> None:
        with self._emulator.lock:
            if self._closed:
                return
            self._advance(record)
            self._emulator.save()

    def _advance(self, record: BuildRecord) -> None:
        if record.applied:
            return
        now = self._emulator.clock()
        build = record.build
        if now >= record.start_at and build.status == Status.QUEUED:
            build.status = WORKING
            build.start_time = utc(record.start_at)
        if now >= record.timeout_at and record.timeout_at < record.finish_at:
            self._finish(record, Status.TIMEOUT, record.timeout_at)
        elif now >= record.finish_at:
            self._finish(record, None, record.finish_at)

    def _finish(self, record: BuildRecord, status: int | None, at: float) -> None:
        build, plan = record.build, record.plan
        record.applied = True
        build.start_time = build.start_time or utc(record.start_at)
        build.finish_time = utc(at)
        if status == Status.TIMEOUT:
            build.status = TIMEOUT
            build.status_detail = "Build timed out"
            plan.log.append("ERROR: context deadline exceeded (build timeout)")
        elif plan.failure is None and not self._denied(record):
            self._push(record)
        if plan.failure is not None and status is None:
            build.status = FAILURE
            build.status_detail = plan.failure
            build.failure_info = Build.FailureInfo(type_=plan.failure_type, detail=plan.failure)
            plan.log += ["ERROR", f"ERROR: {plan.failure}"]
        elif status is None:
            build.status = SUCCESS
            plan.log.append("DONE")
        for i, step in enumerate(build.steps):
            failed = plan.failed_step is not None and i == plan.failed_step
            skipped = plan.failed_step is not None and i > plan.failed_step
            if build.status == Status.SUCCESS or not (failed or skipped):
                step.status = SUCCESS
            elif failed:
                step.status = FAILURE
            else:
                step.status = QUEUED
            step.timing = cloudbuild_v1.TimeSpan(start_time=utc(record.start_at), end_time=utc(at))
        self._write_log(record)

    def _denied(self, record: BuildRecord) -> bool:
        """Whether the build's service account lacks a permission it needs (the plan then
        carries Google's failure; before the push, no step ran for a logging or source one)."""
        denial = runtime_denial(self._emulator, record.build, record.plan)
        if denial is None:
            return False
        plan = record.plan
        plan.failure, plan.failure_type = denial
        if plan.failure_type != int(FailureType.PUSH_NOT_AUTHORIZED):
            plan.failed_step = -1  # every step stays QUEUED
        return True

    def _push(self, record: BuildRecord) -> None:
        build, plan = record.build, record.plan
        registry = self._emulator.get(ArtifactRegistryBackend)
        plan.log.append("PUSH")
        for push in plan.pushes:
            plan.log.append(f"Pushing {push.ref}")
            # The image's config (its Dockerfile's ENV) travels with it, as a pushed image's does.
            metadata = {
                "model": push.model or "",
                "buildId": build.id,
                "env": json.dumps(push.env or {}, sort_keys=True),
            }
            try:
                registry.push_image(
                    push.project,
                    push.location,
                    push.repository,
                    push.image,
                    push.tags,
                    push.digest,
                    metadata,
                )
            except GoogleApiError as exc:
                repo = push.repository
                plan.failure = (
                    f'failed to push {push.ref}: name unknown: Repository "{repo}" not found'
                    if exc.http_status == 404
                    else f"failed to push {push.ref}: {exc.message}"
                )
                plan.failure_type = int(FailureType.PUSH_FAILED)
                return
            for tag in push.tags:
                plan.log.append(f"{tag}: digest: {push.digest}")
            build.results.images.append(
                cloudbuild_v1.BuiltImage(
                    name=push.ref,
                    digest=push.digest,
                    artifact_registry_package=(
                        f"projects/{push.project}/locations/{push.location}/repositories/"
                        f"{push.repository}/packages/{push.image}"
                    ),
                )
            )

    def _write_log(self, record: BuildRecord) -> None:
        if not record.build.logs_bucket:
            return  # CLOUD_LOGGING_ONLY / NONE: no log object
        bucket = record.build.logs_bucket.removeprefix("gs://").split("/", 1)[0]
        data = ("\n".join(record.plan.log) + "\n").encode()
        try:
            self.storage.write(bucket, f"log-{record.build.id}.txt", data, record.build.project_id)
        except (httpx.HTTPError, GoogleApiError) as exc:
            record.build.warnings.append(
                Build.Warning(text=f"could not write the build log to gs://{bucket}: {exc}")
            )

    # -- registry protocol ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"builds": [r.to_state() for r in self._builds.values()]}

    def restore(self, state: dict[str, Any]) -> None:
        for data in state.get("builds", []):
            record = BuildRecord.from_state(data)
            project = record.build.project_id
            self._builds[(project, record.location, record.build.id)] = record
            if not record.applied:
                self._register_operation(record)
                self._schedule(record)

    def close(self) -> None:
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
