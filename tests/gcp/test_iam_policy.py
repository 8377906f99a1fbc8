"""IAM policies without HTTP: who holds which permission (the roles the project uses)."""

from __future__ import annotations

import pytest
from google.iam.v1 import policy_pb2

from emulator.gcp.errors import GoogleApiError
from emulator.gcp.iam.policy import granted_permissions, members_with, replace_policy

EMAIL = "sa@p.iam.gserviceaccount.com"
ALL = [
    "run.routes.invoke",
    "run.services.get",
    "run.services.delete",
    "run.services.getIamPolicy",
    "run.services.setIamPolicy",
]


def _policy(*bindings: tuple[str, str]) -> policy_pb2.Policy:
    return policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role=role, members=[member]) for role, member in bindings]
    )


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("roles/run.invoker", ["run.routes.invoke"]),
        ("roles/run.viewer", ["run.services.get", "run.services.getIamPolicy"]),
        ("roles/run.developer", [p for p in ALL if p != "run.services.setIamPolicy"]),
        ("roles/run.admin", ALL),
        ("roles/owner", ALL),
        ("roles/editor", [p for p in ALL if p != "run.services.setIamPolicy"]),
        ("roles/storage.admin", []),
    ],
)
def test_a_role_grants_its_documented_permissions(role: str, expected: list[str]) -> None:
    policy = _policy((role, f"serviceAccount:{EMAIL}"))
    assert granted_permissions(policy, EMAIL, ALL) == expected
    assert granted_permissions(policy, "other@p.iam.gserviceaccount.com", ALL) == []


def test_public_members_and_anonymous_callers() -> None:
    policy = _policy(("roles/run.invoker", "allUsers"))
    assert granted_permissions(policy, None, ALL) == ["run.routes.invoke"]
    authenticated = _policy(("roles/run.invoker", "allAuthenticatedUsers"))
    assert granted_permissions(authenticated, None, ALL) == []
    assert granted_permissions(authenticated, EMAIL, ALL) == ["run.routes.invoke"]
    assert granted_permissions(_policy(), EMAIL, ALL) == []


def test_invokers_and_policy_replacement() -> None:
    policy = _policy(
        ("roles/run.invoker", "user:a@x.com"),
        ("roles/run.viewer", "user:b@x.com"),
        ("roles/run.admin", "user:c@x.com"),
    )
    assert members_with(policy, "run.routes.invoke") == {"user:a@x.com", "user:c@x.com"}
    stored = replace_policy(policy_pb2.Policy(), policy)
    assert stored.version == 1 and stored.etag
    stale = policy_pb2.Policy(etag=b"old")
    with pytest.raises(GoogleApiError) as conflict:
        replace_policy(stored, stale)
    assert conflict.value.http_status == 409
    with pytest.raises(GoogleApiError, match="Invalid principal: bob"):
        replace_policy(stored, _policy(("roles/run.invoker", "bob")))
    with pytest.raises(GoogleApiError, match="wildcards"):
        granted_permissions(policy, EMAIL, ["run.*"])
