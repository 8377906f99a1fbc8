"""Cloud Build's identity through the official clients against `python -m emulator.gcp`: a
user-specified service account needs a logging option and the caller's actAs; the build then
reads its source, writes logs and pushes only with the roles Google requires (issue 12, item 4)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.auth.transport.requests import AuthorizedSession
from google.cloud.devtools import cloudbuild_v1 as cb

from emulator.gcp import GcpEmulatorProcess
from emulator.gcp.projects import project_number
from tests.gcp.test_cloud_build import LOCATION, Gcp

FailureType = cb.Build.FailureInfo.FailureType
CLOUD_LOGGING_ONLY = cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY


class Identity(Gcp):
    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env)
        self.session = AuthorizedSession(self.builds._transport._credentials)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.session.request(method, f"{self.base}{path}", json=body, timeout=30)
        if response.status_code >= 400:
            raise gexc.from_http_response(response)
        return response.json()

    def create_account(self) -> str:
        account_id = f"build-{uuid.uuid4().hex[:8]}"
        path = f"/v1/projects/{self.project}/serviceAccounts"
        return str(self.call("POST", path, {"accountId": account_id})["email"])

    def project_policy(self, edit: Any = None) -> dict[str, Any]:
        policy: dict[str, Any] = self.call("POST", f"/v3/projects/{self.project}:getIamPolicy", {})
        if edit is None:
            return policy
        edit(policy.setdefault("bindings", []))
        return dict(
            self.call("POST", f"/v3/projects/{self.project}:setIamPolicy", {"policy": policy})
        )

    def build_as(self, email: str, logging: Any = CLOUD_LOGGING_ONLY) -> cb.Build:
        build = self.docker_build(self.upload({"Dockerfile": "FROM a\n"}), [self.image()], ["."])
        build.service_account = f"projects/{self.project}/serviceAccounts/{email}"
        build.options.logging = logging
        return build

    def run(self, build: cb.Build) -> cb.Build:
        op = self.builds.create_build(project_id=self.project, build=build)
        with contextlib.suppress(gexc.GoogleAPICallError):  # a failed build: read it below
            op.result(timeout=60)
        return self.builds.get_build(project_id=self.project, id=op.metadata.build.id)


@pytest.fixture
def gcp(gcp_env: dict[str, str], gcp_emulator: GcpEmulatorProcess) -> Iterator[Identity]:
    g = Identity(gcp_env)
    g.configure(build_seconds=0.3)
    g.enable(
        "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com",
        "iam.googleapis.com",
        "cloudresourcemanager.googleapis.com",
    )
    g.create_repo()
    yield g


def test_a_user_specified_account_needs_a_logging_option_and_act_as(gcp: Identity) -> None:
    email = gcp.create_account()
    with pytest.raises(gexc.BadRequest, match=r"must either \(a\) specify 'build.logs_bucket'"):
        gcp.builds.create_build(project_id=gcp.project, build=gcp.build_as(email, logging=0))
    missing = f"nobody-{uuid.uuid4().hex[:6]}@{gcp.project}.iam.gserviceaccount.com"
    with pytest.raises(gexc.Forbidden, match="caller does not have permission to act as"):
        gcp.builds.create_build(project_id=gcp.project, build=gcp.build_as(missing))
    gcp.call("POST", "/_emulator/permissions", {"deny": ["iam.serviceAccounts.actAs"]})
    try:
        with pytest.raises(gexc.Forbidden, match=f"act as service account projects/.*/{email}"):
            gcp.builds.create_build(project_id=gcp.project, build=gcp.build_as(email))
    finally:
        gcp.call("POST", "/_emulator/reset")  # the only way to lift a denial


def test_each_missing_role_fails_the_build_with_google_s_message(gcp: Identity) -> None:
    email = gcp.create_account()
    member = f"serviceAccount:{email}"

    no_roles = gcp.run(gcp.build_as(email))
    assert no_roles.status == cb.Build.Status.FAILURE
    assert no_roles.failure_info.type_ == FailureType.LOGGING_FAILURE
    assert "grant the Logs Writer (roles/logging.logWriter) role" in no_roles.status_detail

    gcp.project_policy(lambda b: b.append({"role": "roles/logging.logWriter", "members": [member]}))
    no_source = gcp.run(gcp.build_as(email))
    assert no_source.failure_info.type_ == FailureType.FETCH_SOURCE_FAILED
    assert f"{email} does not have storage.objects.get access" in no_source.status_detail

    bucket = gcp.storage.bucket(f"{gcp.project}_cloudbuild")
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {member}})
    bucket.set_iam_policy(policy)
    no_push = gcp.run(gcp.build_as(email))
    assert no_push.failure_info.type_ == FailureType.PUSH_NOT_AUTHORIZED
    repo = gcp.registry.repository_path(gcp.project, LOCATION, gcp.repo)
    assert f'"artifactregistry.repositories.uploadArtifacts" denied on resource "{repo}"' in (
        no_push.status_detail
    )

    repo_policy = gcp.registry.get_iam_policy(request={"resource": repo})
    repo_policy.bindings.add(role="roles/artifactregistry.writer", members=[member])
    gcp.registry.set_iam_policy(request={"resource": repo, "policy": repo_policy})
    built = gcp.run(gcp.build_as(email))
    assert built.status == cb.Build.Status.SUCCESS, built.status_detail
    assert built.service_account.endswith(email) and not built.logs_bucket
    assert [i.name for i in built.results.images] == [gcp.image()]


def test_the_compute_default_account_builds_only_while_it_holds_the_roles(gcp: Identity) -> None:
    compute = f"{project_number(gcp.project)}-compute@developer.gserviceaccount.com"
    assert gcp.run(gcp.build_as(compute)).status == cb.Build.Status.SUCCESS  # Editor: granted
    before = gcp.project_policy()
    member = f"serviceAccount:{compute}"

    def drop_editor(bindings: list[dict[str, Any]]) -> None:
        bindings[:] = [b for b in bindings if member not in b["members"]]

    gcp.project_policy(drop_editor)  # as in organisations created since May 2024
    try:
        failed = gcp.run(gcp.build_as(compute))
        assert failed.failure_info.type_ == FailureType.LOGGING_FAILURE
        assert compute in failed.status_detail
    finally:
        current = gcp.project_policy()
        before["etag"] = current["etag"]
        gcp.call("POST", f"/v3/projects/{gcp.project}:setIamPolicy", {"policy": before})
