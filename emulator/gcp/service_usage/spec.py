"""Service Usage: the names and titles of the APIs the emulator knows, and request limits."""

from __future__ import annotations

import re

from emulator.gcp.errors import GoogleApiError

SERVICE = "serviceusage.googleapis.com"  # always enabled; routes still check tokens
MAX_BATCH_ENABLE = 20
MAX_BATCH_GET = 30
NOOP_OPERATION = "operations/noop.DONE_OPERATION"
ALWAYS_ENABLED = frozenset({"serviceusage.googleapis.com"})
_SERVICE_RE = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z0-9-]+)*\.googleapis\.com$")

# Titles Google uses in SERVICE_DISABLED messages and in Service Usage's `config.title`.
SERVICE_TITLES: dict[str, str] = {
    "artifactregistry.googleapis.com": "Artifact Registry API",
    "cloudbuild.googleapis.com": "Cloud Build API",
    "run.googleapis.com": "Cloud Run Admin API",
    "storage.googleapis.com": "Cloud Storage API",
    "storage-component.googleapis.com": "Cloud Storage",
    "iam.googleapis.com": "Identity and Access Management (IAM) API",
    "iamcredentials.googleapis.com": "IAM Service Account Credentials API",
    "serviceusage.googleapis.com": "Service Usage API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
    "cloudquotas.googleapis.com": "Cloud Quotas API",
    "logging.googleapis.com": "Cloud Logging API",
    "compute.googleapis.com": "Compute Engine API",
}


def unknown_services(names: list[str]) -> list[str]:
    """The names that are not services the emulator knows (Google's check is the same shape)."""
    return [s for s in names if s not in SERVICE_TITLES or not _SERVICE_RE.match(s)]


def not_found_services(names: list[str]) -> GoogleApiError:
    joined = ", ".join(names)
    return GoogleApiError(
        403,
        "PERMISSION_DENIED",
        f"Not found or permission denied for service(s): {joined}.",
        reason="SERVICE_CONFIG_NOT_FOUND_OR_PERMISSION_DENIED",
        domain="serviceusage.googleapis.com",
        metadata={"services": joined},
    )
