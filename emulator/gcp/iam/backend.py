"""IAM service accounts by project id, then email (JSON dicts as the IAM API returns them).

Knows nothing of HTTP.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any

from emulator.gcp.errors import already_exists, not_found
from emulator.gcp.iam.spec import UNKNOWN_ACCOUNT, sa_email, unique_id, validate_account_id
from emulator.gcp.service_usage import ServiceUsageBackend

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


class IamBackend:
    """Service accounts by project id, then email (JSON dicts as the IAM API returns them)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._accounts: dict[str, dict[str, dict[str, Any]]] = {}
        self._created: dict[str, float] = {}  # email -> emulator clock at creation
        self._serial = 0

    def _project(self, project: str) -> str:
        return self.emulator.get(ServiceUsageBackend).resolve_project(project)

    def create(
        self, project: str, account_id: str, display_name: str = "", description: str = ""
    ) -> dict[str, Any]:
        validate_account_id(account_id)
        project_id = self._project(project)
        email = sa_email(account_id, project_id)
        accounts = self._accounts.setdefault(project_id, {})
        if email in accounts:
            raise already_exists(
                f"Service account {account_id} already exists within project projects/{project_id}."
            )
        self._serial += 1
        uid = unique_id(email, self._serial)
        account: dict[str, Any] = {
            "name": f"projects/{project_id}/serviceAccounts/{email}",
            "projectId": project_id,
            "uniqueId": uid,
            "email": email,
            "etag": base64.b64encode(hashlib.sha256(uid.encode()).digest()[:8]).decode(),
            "oauth2ClientId": uid,
        }
        if display_name:
            account["displayName"] = display_name
        if description:
            account["description"] = description
        accounts[email] = account
        self._created[email] = self.emulator.clock()
        return dict(account)

    def find(self, project: str, account: str) -> dict[str, Any] | None:
        """By email or uniqueId; project "-" searches every project."""
        projects = list(self._accounts) if project == "-" else [self._project(project)]
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

    def created_at(self, email: str) -> float | None:
        """When the account `email` was created (emulator clock), None if it does not exist.
        Google's IAM resource has no such field: Cloud Run's propagation check reads it here."""
        return self._created.get(email) if self.find("-", email) is not None else None

    def delete(self, project: str, account: str) -> None:
        data = self.get(project, account)
        del self._accounts[data["projectId"]][data["email"]]
        self._created.pop(data["email"], None)

    def list(self, project: str) -> list[dict[str, Any]]:
        project_id = self._project(project)
        return [dict(a) for _, a in sorted(self._accounts.get(project_id, {}).items())]

    def snapshot(self) -> dict[str, Any]:
        return {"accounts": self._accounts, "serial": self._serial, "created": self._created}

    def restore(self, state: dict[str, Any]) -> None:
        self._accounts = {p: dict(a) for p, a in state.get("accounts", {}).items()}
        self._serial = int(state.get("serial", 0))
        self._created = {e: float(t) for e, t in state.get("created", {}).items()}

    def close(self) -> None:
        pass
