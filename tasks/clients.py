"""The one place that decides whether the project talks to Google Cloud or to the local emulator.

Only endpoints and credentials differ. Set ``OLLAMA_CLOUDRUN_API_ENDPOINT`` (the emulator's env file
does) to send every control-plane API to one base URL; leave it unset for Google's own endpoints.
Cloud Storage follows google-cloud-storage's own ``STORAGE_EMULATOR_HOST``.
Credentials are Application Default Credentials, or a prefect-gcp ``GcpCredentials`` block by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import google.auth
from google.api_core.client_options import ClientOptions
from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import artifactregistry_v1, cloudquotas_v1, run_v2, service_usage_v1
from google.cloud.devtools import cloudbuild_v1
from google.cloud.storage import Client as StorageClient

API_ENDPOINT_ENV = "OLLAMA_CLOUDRUN_API_ENDPOINT"
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


def resolve_cloud(project: str | None = None, credentials_block: str | None = None) -> GoogleCloud:
    """Credentials from a ``GcpCredentials`` block when named, else from ADC."""
    if credentials_block:
        from prefect_gcp import GcpCredentials

        block = GcpCredentials.load(credentials_block)
        credentials = block.get_credentials_from_service_account()
        project = project or block.project
    else:
        credentials, default_project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        project = project or default_project
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise ValueError(
            "No Google Cloud project: pass project=..., set GOOGLE_CLOUD_PROJECT, "
            "or use credentials that name one."
        )
    endpoint = os.environ.get(API_ENDPOINT_ENV) or None
    return GoogleCloud(credentials=credentials, project=project, api_endpoint=endpoint)


def _gapic_kwargs(cloud: GoogleCloud) -> dict[str, Any]:
    options = ClientOptions(api_endpoint=cloud.api_endpoint) if cloud.api_endpoint else None
    return {"credentials": cloud.credentials, "transport": "rest", "client_options": options}


def run_services_client(cloud: GoogleCloud) -> run_v2.ServicesClient:
    return run_v2.ServicesClient(**_gapic_kwargs(cloud))


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


def resource_manager_session(cloud: GoogleCloud) -> tuple[AuthorizedSession, str]:
    """testIamPermissions is one call: an authorized session rather than another client library."""
    return AuthorizedSession(cloud.credentials), cloud.api_endpoint or RESOURCE_MANAGER_ENDPOINT
