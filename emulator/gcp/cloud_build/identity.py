"""Who a build runs as, and what Cloud Build checks of that identity, with Google's own words.

At create (400 / 403, nothing queued):
- a user-specified `serviceAccount` needs a place for the logs: Google rejects the build with
  INVALID_ARGUMENT "if 'build.service_account' is specified, the build must either (a) specify
  'build.logs_bucket', (b) use the REGIONAL_USER_OWNED_BUCKET
  build.options.default_logs_bucket_behavior option, or (c) use either CLOUD_LOGGING_ONLY / NONE
  logging options" (quoted in GoogleCloudPlatform/terraform-google-dataplex-auto-data-quality#39
  and in28minutes/course-material#11; checked in spec.validate_build);
- the caller needs `iam.serviceAccounts.actAs` on that account (roles/iam.serviceAccountUser),
  and it must exist: 403 "caller does not have permission to act as service account ..." (as
  quoted in kohei321dev/spot-diggz#164).

While it runs, as the account (project policy, plus the bucket's or repository's own policy):
- writing logs needs `logging.logEntries.create`, else FAILURE "The service account running this
  build ... does not have permission to write logs to Cloud Logging. To fix this, grant the Logs
  Writer (roles/logging.logWriter) role to the service account." (GoogleCloudPlatform/
  terraform-genai-knowledge-base#245);
- fetching the source needs `storage.objects.get` on its bucket, else FAILURE
  "AccessDeniedException: 403 EMAIL does not have storage.objects.get access to the Google Cloud
  Storage object. ..." (GoogleCloudPlatform/bigquery-dlp-remote-function#70, the same text for
  storage.objects.list);
- pushing needs `artifactregistry.repositories.uploadArtifacts` on the repository, else FAILURE
  `denied: Permission "artifactregistry.repositories.uploadArtifacts" denied on resource
  "projects/P/locations/L/repositories/R" (or it may not exist)` (the registry's answer to
  docker push, GoogleCloudPlatform/cymbal-superstore#4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.cloud.devtools import cloudbuild_v1

from emulator.gcp.cloud_build.plan import BuildPlan
from emulator.gcp.cloud_build.spec import Build, FailureType
from emulator.gcp.errors import GoogleApiError
from emulator.gcp.iam import IamBackend
from emulator.gcp.resource_manager import ResourceManagerBackend
from emulator.gcp.resource_policies import ResourcePolicies, compute_default_account
from emulator.gcp.storage_front import StorageFront

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

Options = cloudbuild_v1.BuildOptions
ACT_AS = "iam.serviceAccounts.actAs"
LOG_WRITE = "logging.logEntries.create"
SOURCE_READ = "storage.objects.get"
PUSH = "artifactregistry.repositories.uploadArtifacts"


def account_email(service_account: str) -> str:
    """`projects/P/serviceAccounts/EMAIL` (or a bare email) → EMAIL."""
    return service_account.rsplit("/", 1)[-1]


def check_act_as(emulator: Emulator, project: str, service_account: str, caller: str) -> None:
    """The caller may run builds as `service_account` (which exists); 403 otherwise."""
    email = account_email(service_account)
    exists = email == compute_default_account(project) or (
        emulator.get(IamBackend).find(project, email) is not None
    )
    holds = emulator.get(ResourceManagerBackend).test_permissions(project, caller, [ACT_AS])
    if not exists or not holds:
        raise GoogleApiError(
            403,
            "PERMISSION_DENIED",
            f"caller does not have permission to act as service account {service_account}",
        )


def runtime_denial(emulator: Emulator, build: Build, plan: BuildPlan) -> tuple[str, int] | None:
    """The first thing the build's account may not do (logs, source, push), as the build's
    failure (status detail, FailureInfo type); None when it may do all."""
    email = account_email(build.service_account)
    policies = emulator.get(ResourcePolicies)
    project = policies.project_resource(build.project_id)

    def may(permission: str, resource: str | None = None) -> bool:
        return policies.holds(project, email, permission) or (
            resource is not None and policies.holds(resource, email, permission)
        )

    if build.options.logging != Options.LoggingMode.NONE and not may(LOG_WRITE):
        return (
            f"The service account running this build {build.service_account} does not have "
            "permission to write logs to Cloud Logging. To fix this, grant the Logs Writer "
            "(roles/logging.logWriter) role to the service account.",
            int(FailureType.LOGGING_FAILURE),
        )
    bucket = build.source.storage_source.bucket
    if bucket and not (
        may(SOURCE_READ) or emulator.get(StorageFront).holds(bucket, email, SOURCE_READ)
    ):
        return (
            f"AccessDeniedException: 403 {email} does not have {SOURCE_READ} access to the "
            f"Google Cloud Storage object. Permission '{SOURCE_READ}' denied on resource (or it "
            "may not exist).",
            int(FailureType.FETCH_SOURCE_FAILED),
        )
    for push in plan.pushes:
        owner = policies.project_resource(push.project)
        repository = f"{owner}/locations/{push.location}/repositories/{push.repository}"
        try:
            key: str | None = policies.repository_resource(
                push.project, push.location, push.repository
            )
        except GoogleApiError:
            key = None  # no such repository: the push fails on that (backend._push)
        if key is not None and not may(PUSH, key):
            return (
                f'denied: Permission "{PUSH}" denied on resource "{repository}" (or it may not '
                "exist)",
                int(FailureType.PUSH_NOT_AUTHORIZED),
            )
    return None
