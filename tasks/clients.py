"""The one place that decides whether the project talks to Google Cloud or to the local emulator.

Only endpoints and credentials differ. Set ``OLLAMA_CLOUDRUN_API_ENDPOINT`` (the emulator's env file
does) to send every control-plane API to one base URL; leave it unset for Google's own endpoints.
Cloud Storage follows google-cloud-storage's own ``STORAGE_EMULATOR_HOST``.
Credentials are Application Default Credentials, or a prefect-gcp ``GcpCredentials`` block by name,
optionally impersonating a service account (``CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT``, gcloud's
own setting). They are resolved here once; the caller's member and ID tokens come from the same
credentials (``caller_identity``, ``tasks.identity``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import google.auth
from google.api_core.client_options import ClientOptions
from google.auth import impersonated_credentials
from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import artifactregistry_v1, cloudquotas_v1, run_v2, service_usage_v1
from google.cloud.devtools import cloudbuild_v1
from google.cloud.storage import Client as StorageClient
from google.oauth2 import credentials as user_credentials

from tasks.identity import IAM_CREDENTIALS_ENDPOINT, Identity, identify

API_ENDPOINT_ENV = "OLLAMA_CLOUDRUN_API_ENDPOINT"
# gcloud's `auth/impersonate_service_account` property as an environment variable (gcloud reads
# every property from CLOUDSDK_<SECTION>_<PROPERTY>: `gcloud topic configurations`).
IMPERSONATE_ENV = "CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
IAM_ENDPOINT = "https://iam.googleapis.com"
RESOURCE_MANAGER_ENDPOINT = "https://cloudresourcemanager.googleapis.com"


@dataclass(frozen=True)
class GoogleCloud:
    """Credentials, project and (for the emulator) the base URL of every control-plane API.

    ``enabled_at``: the APIs this run enabled, with the ``time.time()`` it did so; until their
    enablement has propagated, their ``SERVICE_DISABLED`` errors are transient (tasks.retries).
    """

    credentials: Credentials
    project: str
    api_endpoint: str | None = None
    enabled_at: Mapping[str, float] = field(default_factory=dict, hash=False)

    @property
    def is_emulated(self) -> bool:
        return self.api_endpoint is not None

    def with_enabled(self, enabled_at: Mapping[str, float]) -> GoogleCloud:
        """This cloud, also knowing when the APIs in ``enabled_at`` were enabled."""
        return replace(self, enabled_at={**self.enabled_at, **enabled_at})


def resolve_credentials(credentials_block: str | None = None) -> tuple[Credentials, str | None]:
    """The credentials every call of this run uses, and the project they name.

    A ``GcpCredentials`` block when named, else ADC; impersonating
    ``$CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT`` when set; refreshing at the emulator when
    ``OLLAMA_CLOUDRUN_API_ENDPOINT`` is set.
    """
    project: str | None
    if credentials_block:
        from prefect_gcp import GcpCredentials

        # _sync: inside an async flow (batch) load() would otherwise return a coroutine.
        block = GcpCredentials.load(credentials_block, _sync=True)
        credentials = block.get_credentials_from_service_account()
        project = block.project
    else:
        credentials, project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    target = os.environ.get(IMPERSONATE_ENV) or None
    if target:
        credentials = impersonated_credentials.Credentials(
            source_credentials=credentials,
            target_principal=target,
            target_scopes=[CLOUD_PLATFORM_SCOPE],
        )
    endpoint = os.environ.get(API_ENDPOINT_ENV) or None
    if endpoint:
        credentials = _to_endpoint(credentials, endpoint)
    return credentials, project


def resolve_cloud(project: str | None = None, credentials_block: str | None = None) -> GoogleCloud:
    """Credentials (``resolve_credentials``), project and endpoint of this run."""
    credentials, named_project = resolve_credentials(credentials_block)
    project = project or named_project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise ValueError(
            "No Google Cloud project: pass project=..., set GOOGLE_CLOUD_PROJECT, "
            "or use credentials that name one."
        )
    endpoint = os.environ.get(API_ENDPOINT_ENV) or None
    return GoogleCloud(credentials=credentials, project=project, api_endpoint=endpoint)


def _to_endpoint(credentials: Credentials, endpoint: str) -> Credentials:
    """The same credentials, refreshing at ``endpoint`` (the emulator) instead of Google.

    google-auth pins user credentials to oauth2.googleapis.com (``from_authorized_user_info``:
    "always overrides") and impersonation to iamcredentials.googleapis.com unless given
    ``iam_endpoint_override``; service-account keys carry their ``token_uri`` and the metadata
    server follows ``GCE_METADATA_HOST``, so they need nothing.
    """
    base = endpoint.rstrip("/")
    if isinstance(credentials, user_credentials.Credentials):
        return credentials.with_token_uri(f"{base}/token")
    if isinstance(credentials, impersonated_credentials.Credentials):
        target = credentials.signer_email
        return impersonated_credentials.Credentials(
            source_credentials=_to_endpoint(credentials._source_credentials, endpoint),
            target_principal=target,
            target_scopes=credentials._target_scopes,
            delegates=credentials._delegates,
            iam_endpoint_override=(
                f"{base}/v1/projects/-/serviceAccounts/{target}:generateAccessToken"
            ),
        )
    return credentials


def caller_identity(cloud: GoogleCloud) -> Identity:
    """The caller's IAM member and ID-token source, from ``cloud``'s own credentials."""
    return identify(
        cloud.credentials, iam_credentials_endpoint=cloud.api_endpoint or IAM_CREDENTIALS_ENDPOINT
    )


def credentials_identity(credentials_block: str | None = None) -> Identity:
    """``caller_identity`` where no project is needed (a batch against a plain URL)."""
    credentials, _ = resolve_credentials(credentials_block)
    endpoint = os.environ.get(API_ENDPOINT_ENV) or IAM_CREDENTIALS_ENDPOINT
    return identify(credentials, iam_credentials_endpoint=endpoint)


def _gapic_kwargs(cloud: GoogleCloud) -> dict[str, Any]:
    options = ClientOptions(api_endpoint=cloud.api_endpoint) if cloud.api_endpoint else None
    return {"credentials": cloud.credentials, "transport": "rest", "client_options": options}


def run_services_client(cloud: GoogleCloud) -> run_v2.ServicesClient:
    return run_v2.ServicesClient(**_gapic_kwargs(cloud))


def run_revisions_client(cloud: GoogleCloud) -> run_v2.RevisionsClient:
    return run_v2.RevisionsClient(**_gapic_kwargs(cloud))


def cloud_build_client(cloud: GoogleCloud) -> cloudbuild_v1.CloudBuildClient:
    return cloudbuild_v1.CloudBuildClient(**_gapic_kwargs(cloud))


def artifact_registry_client(cloud: GoogleCloud) -> artifactregistry_v1.ArtifactRegistryClient:
    return artifactregistry_v1.ArtifactRegistryClient(**_gapic_kwargs(cloud))


def service_usage_client(cloud: GoogleCloud) -> service_usage_v1.ServiceUsageClient:
    return service_usage_v1.ServiceUsageClient(**_gapic_kwargs(cloud))


def storage_client(cloud: GoogleCloud) -> StorageClient:
    # google-cloud-storage reads STORAGE_EMULATOR_HOST itself; it then ignores the credentials.
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return StorageClient(project=cloud.project)
    return StorageClient(project=cloud.project, credentials=cloud.credentials)


def iam_session(cloud: GoogleCloud) -> tuple[AuthorizedSession, str]:
    """IAM admin has no REST gapic client: an authorized session and the API's base URL."""
    return AuthorizedSession(cloud.credentials), cloud.api_endpoint or IAM_ENDPOINT


def cloud_quotas_client(cloud: GoogleCloud) -> cloudquotas_v1.CloudQuotasClient:
    return cloudquotas_v1.CloudQuotasClient(**_gapic_kwargs(cloud))


def monitoring_resource(cloud: GoogleCloud) -> Any:
    """Cloud Monitoring v3 over REST: google-api-python-client built from the discovery document
    it ships (google-cloud-monitoring has gRPC transports only, which the emulator does not
    serve; its message types still read the answers: ``tasks.monitoring``)."""
    from googleapiclient.discovery import build  # loaded only when Monitoring is read

    options = ClientOptions(api_endpoint=cloud.api_endpoint) if cloud.api_endpoint else None
    return build(
        "monitoring",
        "v3",
        credentials=cloud.credentials,
        client_options=options,
        static_discovery=True,
        cache_discovery=False,
    )


def resource_manager_session(cloud: GoogleCloud) -> tuple[AuthorizedSession, str]:
    """testIamPermissions is one call: an authorized session rather than another client library."""
    return AuthorizedSession(cloud.credentials), cloud.api_endpoint or RESOURCE_MANAGER_ENDPOINT
