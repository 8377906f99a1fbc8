"""Service-account impersonation: IAM v1 service-account IAM policies and IAM Credentials v1.

Routes (discovery documents iam.v1 and iamcredentials.v1 in google-api-python-client):
  POST /v1/projects/{project}/serviceAccounts/{account}:getIamPolicy   -> Policy
  POST /v1/projects/{project}/serviceAccounts/{account}:setIamPolicy   {"policy", "updateMask"?}
  POST /v1/projects/-/serviceAccounts/{account}:generateAccessToken
       {"scope", "lifetime"?, "delegates"?} -> {"accessToken", "expireTime"}
  POST /v1/projects/-/serviceAccounts/{account}:generateIdToken
       {"audience", "includeEmail"?, "delegates"?} -> {"token"}

Minting a token for a service account requires the caller to hold
`roles/iam.serviceAccountTokenCreator` on it (`roles/iam.serviceAccountOpenIdTokenCreator` suffices
for ID tokens) in the account's own IAM policy: that role carries iam.serviceAccounts.getAccessToken
and getOpenIdToken (IAM roles reference); the emulator's blanket project ownership does not (the
basic roles lack them: owners impersonating get 403 until they grant it, as reported throughout
google-github-actions/auth issues). With `delegates`, each identity in the chain must hold it on the
next. A refusal is Google's 403, as google-github-actions/auth#340 quotes it: "Permission
'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)." with ErrorInfo
reason IAM_PERMISSION_DENIED, domain iam.googleapis.com, metadata.permission. Project-level grants
of the role are not modelled; an unknown account is a 404 "Not found; Gaia id not found for email".
"""

from __future__ import annotations

import base64
import re
import time
from typing import TYPE_CHECKING, Any

from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import json_format

from emulator.gcp.auth.tokens import admin_email
from emulator.gcp.errors import GoogleApiError, invalid_argument, not_found
from emulator.gcp.iam import IamBackend
from emulator.gcp.iam.policy import identity_members, members_with, replace_policy
from emulator.gcp.iam.spec import UNKNOWN_ACCOUNT, unknown_fields
from emulator.gcp.routing import Call, Route

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

IAM_SERVICE = "iam.googleapis.com"
CREDENTIALS_SERVICE = "iamcredentials.googleapis.com"
GET_ACCESS_TOKEN = "iam.serviceAccounts.getAccessToken"
GET_OPENID_TOKEN = "iam.serviceAccounts.getOpenIdToken"
# The request messages' fields (discovery document iamcredentials.v1).
REQUEST_FIELDS = {
    "GenerateAccessTokenRequest": frozenset({"delegates", "lifetime", "scope"}),
    "GenerateIdTokenRequest": frozenset(
        {"audience", "delegates", "includeEmail", "organizationNumberIncluded"}
    ),
}
MAX_LIFETIME_SECONDS = 3600  # without the org policy that extends it (generateAccessToken docs)
_LIFETIME = re.compile(r"^(\d+)(\.\d+)?s$")


def denied(permission: str) -> GoogleApiError:
    return GoogleApiError(
        403,
        "PERMISSION_DENIED",
        f"Permission '{permission}' denied on resource (or it may not exist).",
        "IAM_PERMISSION_DENIED",
        domain=IAM_SERVICE,
        metadata={"permission": permission},
    )


class ServiceAccountPolicies:
    """IAM policies of service accounts, by the account's uniqueId (a recreated account starts
    with an empty policy, as on Google); the key file's account by its email."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._policies: dict[str, policy_pb2.Policy] = {}

    def account(self, project: str, account: str) -> tuple[str, str]:
        """(email, policy key) of an existing account; 404 otherwise."""
        found = self.emulator.get(IamBackend).find(project, account)
        if found is not None:
            return str(found["email"]), str(found["uniqueId"])
        admin = admin_email(self.emulator.config.project)
        if account == admin:
            return admin, admin
        raise not_found(UNKNOWN_ACCOUNT)

    def get(self, key: str) -> policy_pb2.Policy:
        policy = self._policies.get(key)
        if policy is None:
            policy = policy_pb2.Policy(version=1, etag=base64.b64decode("ACAB"))
        return policy

    def set(self, key: str, policy: policy_pb2.Policy) -> policy_pb2.Policy:
        self._policies[key] = replace_policy(self.get(key), policy)
        return self._policies[key]

    def holds(self, key: str, email: str, permission: str) -> bool:
        return bool(identity_members(email) & members_with(self.get(key), permission))

    def snapshot(self) -> dict[str, Any]:
        return {k: json_format.MessageToDict(p) for k, p in self._policies.items()}

    def restore(self, state: dict[str, Any]) -> None:
        self._policies = {
            k: json_format.ParseDict(v, policy_pb2.Policy()) for k, v in state.items()
        }

    def close(self) -> None:
        pass


def _lifetime(value: object, default: int) -> int:
    if value in (None, ""):
        return default
    match = _LIFETIME.match(str(value))
    if not match:
        raise invalid_argument(
            f"Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), "
            f'"{value}"'
        )
    seconds = int(match.group(1))
    if not 0 < seconds <= MAX_LIFETIME_SECONDS:
        raise invalid_argument(f"Lifetime must be between 1s and {MAX_LIFETIME_SECONDS}s (1 hour).")
    return seconds


def routes(emulator: Emulator) -> list[Route]:
    def policies() -> ServiceAccountPolicies:
        return emulator.get(ServiceAccountPolicies)  # per call: reset() rebuilds backends

    def get_iam_policy(call: Call) -> policy_pb2.Policy:
        _, key = policies().account(call.param("project"), call.param("account"))
        return policies().get(key)

    def set_iam_policy(call: Call) -> policy_pb2.Policy:
        request = iam_policy_pb2.SetIamPolicyRequest()
        try:
            json_format.ParseDict(call.body, request)
        except json_format.ParseError as exc:
            raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
        _, key = policies().account(call.param("project"), call.param("account"))
        return policies().set(key, request.policy)

    def authorize(call: Call, permission: str) -> str:
        """The target's email once every hop of caller → delegates → target holds the role."""
        assert call.caller is not None  # the dispatcher answers 401 to an anonymous call
        account = call.param("account")
        found = emulator.get(IamBackend).find("-", account)
        if found is None and account != admin_email(emulator.config.project):
            raise not_found(f"Not found; Gaia id not found for email {account}")
        holder = call.caller
        delegates = [str(d).rsplit("/", 1)[-1] for d in call.body.get("delegates") or []]
        for hop in [*delegates, account]:
            try:
                email, key = policies().account("-", hop)
            except GoogleApiError:
                raise denied(permission) from None
            if not policies().holds(key, holder, permission):
                raise denied(permission)
            holder = email
        return holder

    def known_fields(call: Call, request: str) -> None:
        """Google's 400 for a body field its request message does not declare."""
        unknown = set(call.body) - REQUEST_FIELDS[request]
        if unknown:
            raise unknown_fields(unknown)

    def generate_access_token(call: Call) -> dict[str, Any]:
        known_fields(call, "GenerateAccessTokenRequest")
        email = authorize(call, GET_ACCESS_TOKEN)
        if not call.body.get("scope"):
            raise invalid_argument("Scope must be specified.")
        lifetime = _lifetime(call.body.get("lifetime"), MAX_LIFETIME_SECONDS)
        return {
            "accessToken": emulator.signer.mint_access_token(email, lifetime),
            # Whole seconds, as Google sends it: google-auth parses "%Y-%m-%dT%H:%M:%SZ" exactly
            # (impersonated_credentials._make_iam_token_request).
            "expireTime": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(emulator.clock()) + lifetime)
            ),
        }

    def generate_id_token(call: Call) -> dict[str, Any]:
        known_fields(call, "GenerateIdTokenRequest")
        email = authorize(call, GET_OPENID_TOKEN)
        audience = str(call.body.get("audience") or "")
        if not audience:
            raise invalid_argument("audience must be set.")
        include_email = bool(call.body.get("includeEmail", False))
        lifetime = emulator.config.token_lifetime_seconds
        return {"token": emulator.signer.mint_id_token(email, audience, lifetime, include_email)}

    one = "/v1/projects/{project}/serviceAccounts/{account}"
    return [
        Route("POST", one + ":getIamPolicy", get_iam_policy, IAM_SERVICE),
        Route("POST", one + ":setIamPolicy", set_iam_policy, IAM_SERVICE),
        Route("POST", one + ":generateAccessToken", generate_access_token, CREDENTIALS_SERVICE),
        Route("POST", one + ":generateIdToken", generate_id_token, CREDENTIALS_SERVICE),
    ]
