"""Cloud Resource Manager: `projects.testIamPermissions`, which a caller uses to learn which of
the permissions it names it holds on a project.

Routes (discovery documents cloudresourcemanager.v1/v3 in google-api-python-client):
  POST /v1/projects/{project}:testIamPermissions  {"permissions": [...]} -> {"permissions": [...]}
  POST /v3/projects/{project}:testIamPermissions  (same body; v3's resource is `projects/{id}`)
Control (a prefix Google never uses):
  POST /_emulator/permissions {"project"?, "member"?, "deny": [...]} -> the denied permissions

Every identity the emulator authenticates is an owner of the emulated project (the key file's and
the metadata server's service account, and any other identity its tokens name), so it holds every
permission — except those a test denies, for one member (`serviceAccount:EMAIL`, `user:EMAIL`) or,
without a member, for every caller. An anonymous call is a 401, as on Google. As the discovery
document says, permissions with wildcards (`*`, `storage.*`) are not allowed (400); the answer
lists the granted subset, and proto3 JSON omits the field when that subset is empty.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from emulator.gcp.errors import invalid_argument, unauthenticated
from emulator.gcp.routing import Call, Route
from emulator.gcp.service_usage import ServiceUsageBackend

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

SERVICE = "cloudresourcemanager.googleapis.com"
ALL_MEMBERS = "*"
_PERMISSION_RE = re.compile(r"^[a-z][a-zA-Z0-9]*(\.[a-zA-Z0-9]+){2,}$")


def member_of(email: str) -> str:
    kind = "serviceAccount" if email.endswith(".gserviceaccount.com") else "user"
    return f"{kind}:{email}"


class ResourceManagerBackend:
    """Permissions denied per (project id, member or "*")."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._denied: dict[str, dict[str, set[str]]] = {}

    def deny(self, project: str, member: str, permissions: list[str]) -> list[str]:
        self._validate(permissions)
        project_id = self.emulator.get(ServiceUsageBackend).resolve_project(project)
        denied = self._denied.setdefault(project_id, {}).setdefault(member, set())
        denied.update(permissions)
        return sorted(denied)

    def test_permissions(self, project: str, caller: str, permissions: list[str]) -> list[str]:
        """The subset of `permissions` the caller holds, in the order asked."""
        self._validate(permissions)
        project_id = self.emulator.get(ServiceUsageBackend).resolve_project(project)
        by_member = self._denied.get(project_id, {})
        denied = by_member.get(ALL_MEMBERS, set()) | by_member.get(member_of(caller), set())
        return [p for p in dict.fromkeys(permissions) if p not in denied]

    @staticmethod
    def _validate(permissions: Any) -> None:
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise invalid_argument("Invalid JSON payload: 'permissions' must be a list of strings.")
        bad = [p for p in permissions if not _PERMISSION_RE.match(p)]
        if bad:
            raise invalid_argument(
                f"Permissions with wildcards or malformed names are not allowed: {bad}."
            )

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "denied": {p: {m: sorted(s) for m, s in d.items()} for p, d in self._denied.items()}
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._denied = {
            p: {m: set(s) for m, s in d.items()} for p, d in state.get("denied", {}).items()
        }

    def close(self) -> None:
        pass


def routes(emulator: Emulator) -> list[Route]:
    def backend() -> ResourceManagerBackend:
        manager = emulator.get(ResourceManagerBackend)
        return manager

    def test_iam_permissions(call: Call) -> dict[str, Any]:
        if call.caller is None:
            raise unauthenticated(
                "Request is missing required authentication credential. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                "CREDENTIALS_MISSING",
            )
        unknown = set(call.body) - {"permissions"}
        if unknown:
            raise invalid_argument(
                f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}": '
                "Cannot find field."
            )
        granted = backend().test_permissions(
            call.param("project"), call.caller, call.body.get("permissions", [])
        )
        return {"permissions": granted} if granted else {}

    def deny(call: Call) -> dict[str, Any]:
        project = str(call.body.get("project") or emulator.config.project)
        member = str(call.body.get("member") or ALL_MEMBERS)
        return {"denied": backend().deny(project, member, call.body.get("deny", []))}

    return [
        Route("POST", "/v1/projects/{project}:testIamPermissions", test_iam_permissions, SERVICE),
        Route("POST", "/v3/projects/{project}:testIamPermissions", test_iam_permissions, SERVICE),
        Route("POST", "/_emulator/permissions", deny),
    ]
