"""IAM v1 service-account routes (googleapis `google/iam/admin/v1/iam.proto`; IAM admin has no
REST gapic client: callers use AuthorizedSession):

  POST   /v1/projects/{project}/serviceAccounts            {"accountId", "serviceAccount"}
  GET    /v1/projects/{project}/serviceAccounts            -> {"accounts", "nextPageToken"}
  GET    /v1/projects/{project}/serviceAccounts/{account}  (email or uniqueId; project may be "-")
  DELETE /v1/projects/{project}/serviceAccounts/{account}  -> {}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emulator.gcp.iam.backend import IamBackend
from emulator.gcp.iam.spec import SERVICE, validate_create_request
from emulator.gcp.routing import Call, Route, paginate

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


def _backend(call: Call) -> IamBackend:
    return call.emulator.get(IamBackend)


def create(call: Call) -> dict[str, Any]:
    sa = validate_create_request(call.body)
    return _backend(call).create(
        call.param("project"),
        call.body.get("accountId", ""),
        str(sa.get("displayName", "")),
        str(sa.get("description", "")),
    )


def get(call: Call) -> dict[str, Any]:
    return _backend(call).get(call.param("project"), call.param("account"))


def delete(call: Call) -> dict[str, Any]:
    _backend(call).delete(call.param("project"), call.param("account"))
    return {}


def list_accounts(call: Call) -> dict[str, Any]:
    items, token = paginate(
        _backend(call).list(call.param("project")),
        call.query.get("pageSize"),
        call.query.get("pageToken"),
    )
    out: dict[str, Any] = {"accounts": items} if items else {}
    if token:
        out["nextPageToken"] = token
    return out


def routes(emulator: Emulator) -> list[Route]:
    base = "/v1/projects/{project}/serviceAccounts"
    return [
        Route("POST", base, create, SERVICE),
        Route("GET", base, list_accounts, SERVICE),
        Route("GET", base + "/{account}", get, SERVICE),
        Route("DELETE", base + "/{account}", delete, SERVICE),
    ]
