"""IAM service accounts: ids, emails and the checks Google makes on a new account."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from emulator.gcp.errors import GoogleApiError, invalid_argument

SERVICE = "iam.googleapis.com"
_ACCOUNT_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
UNKNOWN_ACCOUNT = "Unknown service account"
CREATE_FIELDS = frozenset({"accountId", "serviceAccount"})


def sa_email(account_id: str, project: str) -> str:
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def unique_id(email: str, serial: int) -> str:
    digest = hashlib.sha256(f"{email}#{serial}".encode()).hexdigest()
    return str(100_000_000_000_000_000_000 + int(digest, 16) % 900_000_000_000_000_000_000)


def validate_account_id(account_id: Any) -> None:
    if not isinstance(account_id, str) or not account_id:
        raise invalid_argument("Field accountId is required.")
    if not (6 <= len(account_id) <= 30) or not _ACCOUNT_ID.match(account_id):
        raise invalid_argument(
            f"Invalid value for field 'accountId': '{account_id}'. Account ID must be between "
            "6 and 30 characters, start with a lowercase letter, and contain only lowercase "
            "letters, digits and hyphens (not ending with a hyphen): "
            "[a-z]([-a-z0-9]*[a-z0-9])."
        )


def validate_create_request(body: dict[str, Any]) -> dict[str, Any]:
    """The `serviceAccount` of a CreateServiceAccountRequest body (unknown fields are a 400)."""
    sa = body.get("serviceAccount") or {}
    if not isinstance(sa, dict):
        raise invalid_argument("serviceAccount must be an object.")
    unknown = set(body) - CREATE_FIELDS
    if unknown:
        raise unknown_fields(unknown)
    return sa


def unknown_fields(names: set[str]) -> GoogleApiError:
    joined = ", ".join(f'"{n}"' for n in sorted(names))
    return invalid_argument(
        f"Invalid JSON payload received. Unknown name {joined}: Cannot find field."
    )
