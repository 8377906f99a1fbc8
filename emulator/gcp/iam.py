"""IAM v1 service accounts (IAM admin has no REST gapic client: callers use AuthorizedSession).

Routes (googleapis `google/iam/admin/v1/iam.proto`):
  POST   /v1/projects/{project}/serviceAccounts            {"accountId", "serviceAccount"}
  GET    /v1/projects/{project}/serviceAccounts            -> {"accounts", "nextPageToken"}
  GET    /v1/projects/{project}/serviceAccounts/{account}  (email or uniqueId; project may be "-")
  DELETE /v1/projects/{project}/serviceAccounts/{account}  -> {}
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TYPE_CHECKING, Any

from emulator.gcp.core import (
    Call,
    GoogleApiError,
    Route,
    already_exists,
    invalid_argument,
    not_found,
    paginate,
)

if TYPE_CHECKING:
    from emulator.gcp.core import Emulator

SERVICE = "iam.googleapis.com"
_ACCOUNT_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
UNKNOWN_ACCOUNT = "Unknown service account"


def sa_email(account_id: str, project: str) -> str:
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def _unique_id(email: str, serial: int) -> str:
    digest = hashlib.sha256(f"{email}#{serial}".encode()).hexdigest()
    return str(100_000_000_000_000_000_000 + int(digest, 16) % 900_000_000_000_000_000_000)


class IamBackend:
    """Service accounts by project id, then email (JSON dicts as the IAM API returns them)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._accounts: dict[str, dict[str, dict[str, Any]]] = {}
        self._serial = 0

    def create(
        self, project: str, account_id: str, display_name: str = "", description: str = ""
    ) -> dict[str, Any]:
        if not isinstance(account_id, str) or not account_id:
            raise invalid_argument("Field accountId is required.")
        if not (6 <= len(account_id) <= 30) or not _ACCOUNT_ID.match(account_id):
            raise invalid_argument(
                f"Invalid value for field 'accountId': '{account_id}'. Account ID must be between "
                "6 and 30 characters, start with a lowercase letter, and contain only lowercase "
                "letters, digits and hyphens (not ending with a hyphen): "
                "[a-z]([-a-z0-9]*[a-z0-9])."
            )
        project_id = self.emulator.service_usage.resolve_project(project)
        email = sa_email(account_id, project_id)
        accounts = self._accounts.setdefault(project_id, {})
        if email in accounts:
            raise already_exists(
                f"Service account {account_id} already exists within project projects/{project_id}."
            )
        self._serial += 1
        unique_id = _unique_id(email, self._serial)
        account: dict[str, Any] = {
            "name": f"projects/{project_id}/serviceAccounts/{email}",
            "projectId": project_id,
            "uniqueId": unique_id,
            "email": email,
            "etag": base64.b64encode(hashlib.sha256(unique_id.encode()).digest()[:8]).decode(),
            "oauth2ClientId": unique_id,
        }
        if display_name:
            account["displayName"] = display_name
        if description:
            account["description"] = description
        accounts[email] = account
        return dict(account)

    def find(self, project: str, account: str) -> dict[str, Any] | None:
        """By email or uniqueId; project "-" searches every project."""
        projects = (
            list(self._accounts)
            if project == "-"
            else [self.emulator.service_usage.resolve_project(project)]
        )
        for p in projects:
            for email, data in self._accounts.get(p, {}).items():
                if account in (email, data["uniqueId"]):
                    return data
        return None

    def get(self, project: str, account: str) -> dict[str, Any]:
        data = self.find(project, account)
        if data is None:
            raise not_found(UNKNOWN_ACCOUNT)
        return dict(data)

    def delete(self, project: str, account: str) -> None:
        data = self.get(project, account)
        del self._accounts[data["projectId"]][data["email"]]

    def list(self, project: str) -> list[dict[str, Any]]:
        project_id = self.emulator.service_usage.resolve_project(project)
        return [dict(a) for _, a in sorted(self._accounts.get(project_id, {}).items())]

    def snapshot(self) -> dict[str, Any]:
        return {"accounts": self._accounts, "serial": self._serial}

    def restore(self, state: dict[str, Any]) -> None:
        self._accounts = {p: dict(a) for p, a in state.get("accounts", {}).items()}
        self._serial = int(state.get("serial", 0))

    def close(self) -> None:
        pass


def routes(emulator: Emulator) -> list[Route]:
    def backend() -> IamBackend:
        return emulator.iam  # looked up per call: reset() rebuilds backends

    def create(call: Call) -> dict[str, Any]:
        sa = call.body.get("serviceAccount") or {}
        if not isinstance(sa, dict):
            raise invalid_argument("serviceAccount must be an object.")
        unknown = set(call.body) - {"accountId", "serviceAccount"}
        if unknown:
            raise _unknown_fields(unknown)
        return backend().create(
            call.param("project"),
            call.body.get("accountId", ""),
            str(sa.get("displayName", "")),
            str(sa.get("description", "")),
        )

    def get(call: Call) -> dict[str, Any]:
        return backend().get(call.param("project"), call.param("account"))

    def delete(call: Call) -> dict[str, Any]:
        backend().delete(call.param("project"), call.param("account"))
        return {}

    def list_accounts(call: Call) -> dict[str, Any]:
        items, token = paginate(
            backend().list(call.param("project")),
            call.query.get("pageSize"),
            call.query.get("pageToken"),
        )
        out: dict[str, Any] = {"accounts": items} if items else {}
        if token:
            out["nextPageToken"] = token
        return out

    base = "/v1/projects/{project}/serviceAccounts"
    return [
        Route("POST", base, create, SERVICE),
        Route("GET", base, list_accounts, SERVICE),
        Route("GET", base + "/{account}", get, SERVICE),
        Route("DELETE", base + "/{account}", delete, SERVICE),
    ]


def _unknown_fields(names: set[str]) -> GoogleApiError:
    joined = ", ".join(f'"{n}"' for n in sorted(names))
    return invalid_argument(
        f"Invalid JSON payload received. Unknown name {joined}: Cannot find field."
    )
