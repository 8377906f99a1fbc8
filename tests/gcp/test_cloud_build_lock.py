"""Creating a build fetches its source over HTTP: meanwhile the emulator's lock is free (build
timers and service threads can take it) and other calls are served (the event loop is free)."""

from __future__ import annotations

import threading

from google.cloud import service_usage_v1
from google.cloud.devtools import cloudbuild_v1 as cb

from emulator.gcp.cloud_build import CloudBuildBackend
from tests.gcp.conftest import PROJECT, LocalGcp
from tests.gcp.test_cloud_build import DOCKERFILE, tarball


class HeldStorage:
    """A Cloud Storage whose source fetch waits until the test lets it go."""

    def __init__(self) -> None:
        self.fetching = threading.Event()
        self.release = threading.Event()

    def fetch(self, bucket: str, name: str, generation: int | None) -> bytes:
        self.fetching.set()
        assert self.release.wait(timeout=30), "the test never released the fetch"
        return tarball({"Dockerfile": DOCKERFILE, "entrypoint.sh": "#!/bin/sh\n"})

    def write(self, bucket: str, name: str, data: bytes, project: str) -> None:
        pass


def test_other_calls_are_served_while_a_build_fetches_its_source(local_gcp: LocalGcp) -> None:
    local_gcp.enable("cloudbuild.googleapis.com")
    storage = HeldStorage()
    local_gcp.emulator.get(CloudBuildBackend).storage = storage
    builds = local_gcp.client(cb.CloudBuildClient)
    build = cb.Build(
        source=cb.Source(storage_source=cb.StorageSource(bucket="b", object_="src.tgz")),
        steps=[cb.BuildStep(name="gcr.io/cloud-builders/docker", args=["build", "."])],
    )
    created: list[str] = []
    creator = threading.Thread(
        target=lambda: created.append(
            builds.create_build(project_id=PROJECT, build=build).operation.name
        )
    )
    creator.start()
    try:
        assert storage.fetching.wait(timeout=30)
        lock = local_gcp.emulator.lock  # background threads (build timers) can take it
        assert lock.acquire(timeout=10), "the lock is held while the source is fetched"
        lock.release()
        usage = local_gcp.client(service_usage_v1.ServiceUsageClient)
        name = f"projects/{PROJECT}/services/cloudbuild.googleapis.com"
        service = usage.get_service(request={"name": name})
        assert service.state == service_usage_v1.State.ENABLED
        assert not created  # the create call is still waiting for its source
    finally:
        storage.release.set()
        creator.join(timeout=30)
    assert created and created[0].startswith(f"operations/build/{PROJECT}/")
