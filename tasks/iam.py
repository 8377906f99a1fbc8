"""IAM service accounts over REST (IAM admin has no REST gapic client; see tasks.clients).

Service accounts have no labels, so the ones this project creates carry a marker in their
description: ``managed-by=ollama-cloudrun created=<RFC 3339 UTC>``; the sweep parses it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from google.api_core import exceptions as gexc
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.deletions import Deletion, delete_resource, list_or_empty
from tasks.errors import OllamaCloudRunError, google_errors
from tasks.models import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from tasks.retries import consistency_retry, transient_retry

REQUEST_TIMEOUT_SECONDS = 30.0
POLICY_ATTEMPTS = 5  # read-modify-write rounds when concurrent writers keep changing a policy
MARKER = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
_CREATED_RE = re.compile(r"created=(\S+)")
SERVICE_ACCOUNT_KIND = "service account"


@dataclass(frozen=True)
class ServiceAccount:
    """The fields of IAM's ServiceAccount this project reads (JSON names as Google sends them)."""

    name: str
    email: str
    unique_id: str = ""
    display_name: str = ""
    description: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceAccount:
        return cls(
            name=data["name"],
            email=data["email"],
            unique_id=data.get("uniqueId", ""),
            display_name=data.get("displayName", ""),
            description=data.get("description", ""),
        )


def service_account_email(project: str, account_id: str) -> str:
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def managed_description(
    now: dt.datetime | None = None, purpose: str = "Ollama on Cloud Run runtime identity"
) -> str:
    created = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{purpose}; {MARKER} created={created}"


def is_managed_account(account: ServiceAccount) -> bool:
    """Whether this project made the account (the marker in its description)."""
    return MARKER in f"{account.description} {account.display_name}"


def marker_created(account: ServiceAccount) -> dt.datetime | None:
    """When a service account we manage was created (from its description), else None."""
    text = f"{account.description} {account.display_name}"
    if MARKER not in text:
        return None
    match = _CREATED_RE.search(text)
    if not match:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    try:
        return dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)


def _request(cloud: GoogleCloud, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    session, base = clients.iam_session(cloud)
    try:
        response = session.request(
            method, f"{base}{path}", json=body, timeout=REQUEST_TIMEOUT_SECONDS
        )
    finally:
        session.close()
    if response.status_code >= 400:
        raise gexc.from_http_response(response)
    return response


def get_service_account(cloud: GoogleCloud, email: str) -> ServiceAccount:
    with google_errors(f"read service account {email}"):
        response = transient_retry(cloud)(_request)(
            cloud, "GET", f"/v1/projects/{cloud.project}/serviceAccounts/{email}"
        )
    return ServiceAccount.from_json(response.json())


def account_created_at(cloud: GoogleCloud, email: str) -> float | None:
    """When a service account this project manages was created (its marker), as a POSIX time;
    None for an account without the marker or one IAM cannot show."""
    try:
        created = marker_created(get_service_account(cloud, email))
    except (gexc.GoogleAPICallError, OllamaCloudRunError):
        return None
    return created.timestamp() if created is not None else None


@task(name="ensure-service-account", cache_policy=NO_CACHE)
def ensure_service_account(
    cloud: GoogleCloud, account_id: str, display_name: str, purpose: str | None = None
) -> tuple[str, bool]:
    """Create the service account (no roles granted) or get it; wait until IAM can read it.

    Returns (its email, created).
    """
    email = service_account_email(cloud.project, account_id)
    description = managed_description(purpose=purpose) if purpose else managed_description()
    body = {
        "accountId": account_id,
        "serviceAccount": {"displayName": display_name, "description": description},
    }
    created = True
    with google_errors(f"create service account {email}"):
        try:
            transient_retry(cloud)(_request)(
                cloud, "POST", f"/v1/projects/{cloud.project}/serviceAccounts", body
            )
        except gexc.Conflict:
            created = False
        # IAM is eventually consistent: a new account may 404 for a while. Read it back until then.
        account = consistency_retry(cloud)(get_service_account)(cloud, email)
    get_run_logger().info(
        "Service account %s %s", account.email, "created" if created else "exists"
    )
    return account.email, created


@task(name="delete-service-account", cache_policy=NO_CACHE)
def delete_service_account(cloud: GoogleCloud, email: str) -> Deletion:
    """Delete the account (already gone is success)."""
    return delete_resource(
        SERVICE_ACCOUNT_KIND,
        email,
        partial(
            transient_retry(cloud)(_request),
            cloud,
            "DELETE",
            f"/v1/projects/{cloud.project}/serviceAccounts/{email}",
        ),
    )


def list_service_accounts(cloud: GoogleCloud) -> list[ServiceAccount]:
    accounts: list[ServiceAccount] = []
    page_token = ""
    while True:
        query = f"?pageToken={page_token}" if page_token else ""
        with google_errors("list service accounts"):
            response = transient_retry(cloud)(_request)(
                cloud, "GET", f"/v1/projects/{cloud.project}/serviceAccounts{query}"
            )
        page = response.json()
        accounts.extend(ServiceAccount.from_json(a) for a in page.get("accounts", []))
        page_token = page.get("nextPageToken", "")
        if not page_token:
            return accounts


@task(name="sweep-idle-service-accounts", cache_policy=NO_CACHE)
def sweep_idle_service_accounts(
    cloud: GoogleCloud, older_than: dt.datetime, accounts_in_use: set[str]
) -> list[Deletion]:
    """Delete every managed account that no remaining service runs as, created before
    ``older_than`` (service accounts have no labels: the marker in their description)."""
    deletions = []
    for account in list_or_empty(partial(list_service_accounts, cloud)):
        created = marker_created(account)
        if created is None or created >= older_than or account.email in accounts_in_use:
            continue
        deletion = delete_service_account.fn(cloud, account.email)
        deletions.append(deletion.because("no service runs as it"))
    # Their project grants (the build account's logs writer) go with them.
    gone = {f"serviceAccount:{d.name}" for d in deletions if d.deleted}
    if gone:
        list_or_empty(lambda: [revoke_project_members(cloud, gone)])
    return deletions


# -- IAM policies: one binding added, one member removed ----------------------------------------


def add_binding(bindings: list[dict[str, Any]], role: str, member: str) -> bool:
    """Edit JSON ``bindings`` in place so ``role`` has ``member``; True if they changed."""
    for binding in bindings:
        if binding.get("role") == role and not binding.get("condition"):
            members = binding.setdefault("members", [])
            if member in members:
                return False
            if isinstance(members, set):  # google-cloud-storage's Policy keeps sets
                members.add(member)
            else:
                members.append(member)
            return True
    bindings.append({"role": role, "members": [member]})
    return True


def remove_member(bindings: list[dict[str, Any]], members: set[str]) -> bool:
    """Edit JSON ``bindings`` in place so no binding names any of ``members``; True if changed."""
    changed = False
    for binding in list(bindings):
        kept = [m for m in binding.get("members", []) if m not in members]
        if len(kept) != len(binding.get("members", [])):
            changed = True
            if kept:
                binding["members"] = kept
            else:
                bindings.remove(binding)
    return changed


def edit_project_policy(cloud: GoogleCloud, edit: Callable[[list[dict[str, Any]]], bool]) -> bool:
    """Read-modify-write of the project's IAM policy (Resource Manager v3), again from the read
    when another writer changed it meanwhile (409 ABORTED on a stale etag). True if changed."""
    session, base = clients.resource_manager_session(cloud)
    url = f"{base}/v3/projects/{cloud.project}"

    def call(verb: str, body: dict[str, Any]) -> dict[str, Any]:
        response = session.post(f"{url}:{verb}", json=body, timeout=REQUEST_TIMEOUT_SECONDS)
        if response.status_code >= 400:
            raise gexc.from_http_response(response)
        data: dict[str, Any] = response.json()
        return data

    try:
        for attempt in range(POLICY_ATTEMPTS):
            policy = transient_retry(cloud)(call)(
                "getIamPolicy", {"options": {"requestedPolicyVersion": 3}}
            )
            if not edit(policy.setdefault("bindings", [])):
                return False
            try:
                transient_retry(cloud)(call)("setIamPolicy", {"policy": policy})
                return True
            except gexc.Conflict:
                if attempt == POLICY_ATTEMPTS - 1:
                    raise
        return False
    finally:
        session.close()


def grant_project_role(cloud: GoogleCloud, role: str, member: str) -> bool:
    """``role`` for ``member`` on the project; True if it was granted now."""
    with google_errors(f"grant {role} to {member} on project {cloud.project}"):
        return edit_project_policy(cloud, partial(add_binding, role=role, member=member))


def revoke_project_members(cloud: GoogleCloud, members: set[str]) -> bool:
    """Every project binding of ``members`` removed (a deleted account's stay otherwise)."""
    with google_errors(f"remove {', '.join(sorted(members))} from project {cloud.project}"):
        return edit_project_policy(cloud, partial(remove_member, members=members))
