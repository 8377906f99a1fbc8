"""IAM policies on resources (a Cloud Run service's): what a policy may contain, and which
permissions it grants to whom. Pure: no state, no HTTP.

Role -> permission mapping (the few roles this project uses; a permission pattern is an
`fnmatch` glob, a role may also deny some patterns), from Google's predefined-roles references:
- Cloud Run roles, https://cloud.google.com/run/docs/reference/iam/roles :
  roles/run.invoker = run.routes.invoke, run.jobs.run, run.jobs.runWithOverrides;
  roles/run.viewer = get/list of services, revisions, routes, configurations, operations and
  run.services.getIamPolicy; roles/run.developer = the viewer's plus create/update/delete of
  services and run.routes.* ("can get but not set IAM policies"); roles/run.admin = run.*.
- Basic roles, https://cloud.google.com/iam/docs/understanding-roles#basic : roles/owner = every
  permission; roles/editor = every permission but changing IAM policies (*.setIamPolicy);
  roles/viewer = read-only (*.get, *.list, *.getIamPolicy). "By default, only project owners and
  editors can create, update, delete, or invoke Cloud Run resources, and only project owners and
  Cloud Run Admins can modify IAM policies" (https://cloud.google.com/run/docs/securing/managing-access).
- Service account roles, https://cloud.google.com/iam/docs/service-account-permissions :
  roles/iam.serviceAccountTokenCreator = getAccessToken, getOpenIdToken, implicitDelegation,
  signBlob, signJwt (plus get/list); roles/iam.serviceAccountOpenIdTokenCreator = getOpenIdToken;
  roles/iam.serviceAccountUser = iam.serviceAccounts.actAs (plus get/list).
- What a build's service account needs (https://cloud.google.com/build/docs/cloud-build-service-
  account-updates, and the roles reference https://cloud.google.com/iam/docs/understanding-roles):
  roles/storage.objectViewer = storage.objects.get, storage.objects.list;
  roles/artifactregistry.writer = the reader's (downloadArtifacts, get/list) plus
  artifactregistry.repositories.uploadArtifacts and tags create/update;
  roles/logging.logWriter = logging.logEntries.create, logging.logEntries.route.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from google.iam.v1 import policy_pb2

from emulator.gcp.errors import GoogleApiError, invalid_argument

INVOKE = "run.routes.invoke"
_RUN_READ = (
    "run.services.get", "run.services.list", "run.services.getIamPolicy", "run.routes.get",
    "run.routes.list", "run.revisions.get", "run.revisions.list", "run.configurations.get",
    "run.configurations.list", "run.operations.get", "run.operations.list", "run.locations.list",
)  # fmt: skip
_RUN_DEVELOP = (
    *_RUN_READ, "run.services.create", "run.services.update", "run.services.delete",
    "run.routes.*", "run.revisions.*", "run.configurations.*", "run.operations.*",
)  # fmt: skip

_TOKEN_CREATOR = (
    "iam.serviceAccounts.getAccessToken", "iam.serviceAccounts.getOpenIdToken",
    "iam.serviceAccounts.implicitDelegation", "iam.serviceAccounts.signBlob",
    "iam.serviceAccounts.signJwt", "iam.serviceAccounts.get", "iam.serviceAccounts.list",
)  # fmt: skip

_REGISTRY_READ = (
    "artifactregistry.repositories.downloadArtifacts", "artifactregistry.repositories.get",
    "artifactregistry.repositories.list", "artifactregistry.dockerimages.*",
    "artifactregistry.packages.get", "artifactregistry.packages.list",
    "artifactregistry.tags.get", "artifactregistry.tags.list",
    "artifactregistry.versions.get", "artifactregistry.versions.list",
)  # fmt: skip
_REGISTRY_WRITE = (
    *_REGISTRY_READ, "artifactregistry.repositories.uploadArtifacts",
    "artifactregistry.tags.create", "artifactregistry.tags.update",
)  # fmt: skip


@dataclass(frozen=True)
class Role:
    grants: tuple[str, ...]
    denies: tuple[str, ...] = ()

    def has(self, permission: str) -> bool:
        def matches(patterns: Iterable[str]) -> bool:
            return any(fnmatch.fnmatchcase(permission, p) for p in patterns)

        return matches(self.grants) and not matches(self.denies)


ROLES: dict[str, Role] = {
    "roles/owner": Role(("*",)),
    "roles/editor": Role(("*",), denies=("*.setIamPolicy",)),
    "roles/viewer": Role(("*.get", "*.list", "*.getIamPolicy")),
    "roles/run.admin": Role(("run.*",)),
    "roles/run.developer": Role(_RUN_DEVELOP),
    "roles/run.viewer": Role(_RUN_READ),
    "roles/run.invoker": Role((INVOKE, "run.jobs.run", "run.jobs.runWithOverrides")),
    "roles/iam.serviceAccountTokenCreator": Role(_TOKEN_CREATOR),
    "roles/iam.serviceAccountOpenIdTokenCreator": Role(("iam.serviceAccounts.getOpenIdToken",)),
    "roles/iam.serviceAccountUser": Role(
        ("iam.serviceAccounts.actAs", "iam.serviceAccounts.get", "iam.serviceAccounts.list")
    ),
    "roles/storage.objectViewer": Role(("storage.objects.get", "storage.objects.list")),
    "roles/artifactregistry.reader": Role(_REGISTRY_READ),
    "roles/artifactregistry.writer": Role(_REGISTRY_WRITE),
    "roles/logging.logWriter": Role(("logging.logEntries.create", "logging.logEntries.route")),
}
_MEMBER = re.compile(r"^(user|serviceAccount|group|domain|principal|principalSet):.+")
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")


def role_has(role: str, permission: str) -> bool:
    known = ROLES.get(role)
    return known is not None and known.has(permission)


def validate_policy(policy: policy_pb2.Policy) -> None:
    """Google's INVALID_ARGUMENTs on SetIamPolicy: role names and principal forms."""
    for binding in policy.bindings:
        if not binding.role.startswith("roles/"):
            raise invalid_argument(f"Role {binding.role} is not a valid role.")
        for member in binding.members:
            if member not in PUBLIC_MEMBERS and not _MEMBER.match(member):
                raise invalid_argument(
                    f"Invalid principal: {member}. Principals must be of the form "
                    "'user:EMAIL', 'serviceAccount:EMAIL', 'group:EMAIL', 'domain:DOMAIN', "
                    "'allUsers' or 'allAuthenticatedUsers'."
                )


def replace_policy(current: policy_pb2.Policy, policy: policy_pb2.Policy) -> policy_pb2.Policy:
    """The stored policy after SetIamPolicy: etag checked (409 ABORTED on a concurrent change),
    validated, version at least 1 and a fresh etag."""
    if policy.etag and policy.etag != current.etag:
        raise GoogleApiError(
            409,
            "ABORTED",
            "There were concurrent policy changes. Please retry the whole read-modify-write "
            "with exponential backoff.",
        )
    validate_policy(policy)
    new = policy_pb2.Policy()
    new.CopyFrom(policy)
    new.version = max(1, policy.version)
    new.etag = secrets.token_bytes(8)
    return new


def empty_policy() -> policy_pb2.Policy:
    """A resource's policy before anyone set one (etag "ACAB", as Google answers it)."""
    return policy_pb2.Policy(version=1, etag=b"\x00\x20\x01")


def members_with(policy: policy_pb2.Policy, permission: str) -> frozenset[str]:
    """Every member the policy grants `permission` (e.g. the invokers of a service)."""
    return frozenset(m for b in policy.bindings if role_has(b.role, permission) for m in b.members)


def identity_members(email: str | None) -> frozenset[str]:
    """The members that name a caller: anonymous callers are only `allUsers`."""
    if email is None:
        return frozenset({"allUsers"})
    return frozenset(
        {"allUsers", "allAuthenticatedUsers", f"serviceAccount:{email}", f"user:{email}"}
    )


def granted_permissions(
    policy: policy_pb2.Policy, email: str | None, permissions: Iterable[str]
) -> list[str]:
    """TestIamPermissions on the resource's own policy: the requested permissions `email` (None:
    anonymous) holds through its bindings. What it inherits from the project is the caller's to
    add (emulator.gcp.resource_manager)."""
    requested = list(permissions)
    wildcards = [p for p in requested if "*" in p]
    if wildcards:  # google/iam/v1/iam_policy.proto, TestIamPermissionsRequest.permissions
        raise invalid_argument(
            f"Permissions with wildcards (such as '*' or 'storage.*') are not allowed: "
            f"{', '.join(wildcards)}."
        )
    members = identity_members(email)
    roles = [b.role for b in policy.bindings if members & set(b.members)]
    return [p for p in requested if any(role_has(r, p) for r in roles)]
