"""Cloud Build's identity, pure parts: the Build deploy sends, the roles' bindings, the
permissions the preflight asks for."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.cloud.devtools import cloudbuild_v1
from pydantic import ValidationError

from flows.parameters import DeployParameters
from tasks import preflight
from tasks.cloud_build import build_request, service_account_name
from tasks.iam import add_binding, remove_member
from tasks.storage import StagedSource

SOURCE = StagedSource("p_cloudbuild", "source/x.tgz", 7)
IMAGE = "us-central1-docker.pkg.dev/p/ollama/ollama-gemma:src-1"


def test_a_build_as_a_service_account_logs_to_cloud_logging_only() -> None:
    name = service_account_name("p", "ollama-build@p.iam.gserviceaccount.com")
    assert name == "projects/p/serviceAccounts/ollama-build@p.iam.gserviceaccount.com"
    build = build_request(SOURCE, IMAGE, {"MODEL": "gemma2:9b"}, 600, service_account=name)
    assert build.service_account == name
    # Cloud Build's 400 otherwise: "if 'build.service_account' is specified, the build must...".
    assert build.options.logging == cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY
    assert not build.logs_bucket
    body = cloudbuild_v1.Build.to_json(build, use_integers_for_enums=False)
    assert '"serviceAccount": "projects/p/' in body and '"logging": "CLOUD_LOGGING_ONLY"' in body
    plain = build_request(SOURCE, IMAGE, {}, 600)
    assert not plain.service_account and not plain.options.logging


def test_another_project_s_account_and_the_compute_default_account_are_named_right() -> None:
    other = service_account_name("p", "b@other-proj.iam.gserviceaccount.com")
    assert other == "projects/other-proj/serviceAccounts/b@other-proj.iam.gserviceaccount.com"
    compute = "123-compute@developer.gserviceaccount.com"
    assert service_account_name("p", compute) == f"projects/p/serviceAccounts/{compute}"


def test_the_build_account_is_an_id_deploy_manages_or_an_email_left_as_is() -> None:
    assert DeployParameters().build_service_account == "ollama-build"
    assert DeployParameters().manages_build_account
    theirs = DeployParameters(build_service_account="123-compute@developer.gserviceaccount.com")
    assert not theirs.manages_build_account
    for bad in ("Bad_Id", "x", "someone@example.com"):
        with pytest.raises(ValidationError):
            DeployParameters(build_service_account=bad)
    assert isinstance(DeployParameters().context, Path)


def test_bindings_are_added_once_and_removed_wholly() -> None:
    bindings: list[dict[str, object]] = [{"role": "roles/viewer", "members": ["user:a@x.com"]}]
    assert add_binding(bindings, "roles/logging.logWriter", "serviceAccount:b@p.com")
    assert not add_binding(bindings, "roles/logging.logWriter", "serviceAccount:b@p.com")
    assert add_binding(bindings, "roles/viewer", "serviceAccount:b@p.com")
    assert remove_member(bindings, {"serviceAccount:b@p.com"})
    assert bindings == [{"role": "roles/viewer", "members": ["user:a@x.com"]}]
    assert not remove_member(bindings, {"serviceAccount:b@p.com"})
    sets: list[dict[str, object]] = [{"role": "roles/storage.objectViewer", "members": set()}]
    assert add_binding(sets, "roles/storage.objectViewer", "serviceAccount:b@p.com")
    assert sets[0]["members"] == {"serviceAccount:b@p.com"}


def test_the_preflight_asks_for_act_as_and_for_the_grants_only_when_deploy_makes_them() -> None:
    managed = preflight.required_permissions(True)
    theirs = preflight.required_permissions(False)
    assert "iam.serviceAccounts.actAs" in theirs
    grants = {"resourcemanager.projects.setIamPolicy", "storage.buckets.setIamPolicy",
              "artifactregistry.repositories.setIamPolicy"}  # fmt: skip
    assert grants <= set(managed) and not grants & set(theirs)
