"""The one error boundary, the one retry predicate and the deletion record, without HTTP."""

from __future__ import annotations

import time

import google.auth.credentials
import pytest
from google.api_core import exceptions as gexc
from google.rpc import error_details_pb2

from tasks.clients import GoogleCloud
from tasks.deletions import Outcome, delete_resource
from tasks.errors import (
    AccessDeniedError,
    InvalidRequestError,
    QuotaExceededError,
    google_errors,
)
from tasks.retries import PROPAGATION_WINDOW_SECONDS, is_transient

RUN_API = "run.googleapis.com"
GPU_QUOTA = (
    "Max instances must be set to 3 or fewer in order to set GPU requirements. "
    "Quota violated: NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion requested: 7 allowed: 3"
)


def _service_disabled(api: str = RUN_API) -> gexc.Forbidden:
    info = error_details_pb2.ErrorInfo(reason="SERVICE_DISABLED", metadata={"service": api})
    return gexc.Forbidden(f"{api} has not been used in project p", error_info=info)


def _escaping(google: Exception, action: str = "act", requested: int | None = None) -> Exception:
    """What leaves the boundary when ``google`` is raised inside it."""
    try:
        with google_errors(action, requested=requested):
            raise google
    except Exception as exc:
        return exc
    raise AssertionError("the boundary swallowed the error")


def test_permanent_errors_become_ours_with_googles_chained() -> None:
    google = gexc.Forbidden("caller lacks run.services.create")
    denied = _escaping(google, "create service s")
    assert isinstance(denied, AccessDeniedError)
    assert "create service s: caller lacks run.services.create" in str(denied)
    assert denied.__cause__ is google
    assert denied.api is None

    invalid = _escaping(gexc.BadRequest("template.containers: bad"), "deploy")
    assert isinstance(invalid, InvalidRequestError)
    assert "Google rejected the request to deploy: template.containers: bad" in str(invalid)


def test_an_api_not_enabled_names_the_api_and_the_command() -> None:
    denied = _escaping(_service_disabled(), "read service s")
    assert isinstance(denied, AccessDeniedError)
    assert f"gcloud services enable {RUN_API}" in str(denied)
    assert denied.api == RUN_API


@pytest.mark.parametrize(
    "google", [gexc.NotFound("gone"), gexc.Conflict("exists"), gexc.ServiceUnavailable("later")]
)
def test_expected_and_transient_errors_pass_through_as_googles(
    google: gexc.GoogleAPICallError,
) -> None:
    assert _escaping(google) is google


def test_quota_exceeded_is_a_quota_only_where_instances_were_requested() -> None:
    rate_limit = gexc.TooManyRequests("Quota exceeded for quota metric 'Read requests' per minute")
    assert _escaping(rate_limit, "list services") is rate_limit
    assert is_transient(rate_limit)

    capacity = gexc.TooManyRequests("Quota exceeded for total allowable GPUs per region")
    quota = _escaping(capacity, "deploy", requested=7)
    assert isinstance(quota, QuotaExceededError)
    assert "(requested max_instances=7)" in str(quota)


def test_gpu_quota_is_permanent_and_parsed_once() -> None:
    google = gexc.TooManyRequests(GPU_QUOTA)
    assert not is_transient(google)
    quota = _escaping(google, "deploy", requested=7)
    assert isinstance(quota, QuotaExceededError)
    assert quota.quota == "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
    assert quota.max_fit == 3
    assert "max_instances=3" in str(quota)


def test_service_disabled_is_transient_only_while_an_enabling_propagates() -> None:
    error = _service_disabled()
    assert not is_transient(error)
    assert is_transient(error, {RUN_API: time.time()})
    assert not is_transient(error, {RUN_API: time.time() - PROPAGATION_WINDOW_SECONDS - 1})
    assert not is_transient(error, {"iam.googleapis.com": time.time()})


def test_a_cloud_learns_what_was_enabled_without_changing() -> None:
    credentials = google.auth.credentials.AnonymousCredentials()
    cloud = GoogleCloud(credentials=credentials, project="my-proj")
    enabled = cloud.with_enabled({RUN_API: 1.0})
    assert dict(enabled.enabled_at) == {RUN_API: 1.0}
    assert dict(cloud.enabled_at) == {}


def _raise(exc: Exception) -> None:
    raise exc


def test_a_deletion_records_deleted_absent_or_api_disabled() -> None:
    assert delete_resource("service", "s", lambda: None).outcome is Outcome.DELETED
    absent = delete_resource("service", "s", lambda: _raise(gexc.NotFound("gone")))
    assert absent.row() == {"kind": "service", "name": "s", "result": "already gone"}
    disabled = delete_resource("service", "s", lambda: _raise(_service_disabled()))
    assert disabled.outcome is Outcome.API_DISABLED
    with pytest.raises(AccessDeniedError):
        delete_resource("service", "s", lambda: _raise(gexc.Forbidden("no permission")))
