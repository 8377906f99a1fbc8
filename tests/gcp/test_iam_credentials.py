"""Impersonation: service-account IAM policies and IAM Credentials generateAccessToken /
generateIdToken, driven by google-auth's impersonated credentials and tasks.identity."""

from __future__ import annotations

from typing import Any

import google.auth.transport.requests as gar
import httpx
import pytest
from google.auth import exceptions as auth_exceptions
from google.auth import impersonated_credentials
from google.auth.transport.requests import AuthorizedSession

from emulator.gcp.auth import admin_email
from tasks.identity import identify
from tests.gcp.conftest import PROJECT, SCOPES, LocalGcp

AUDIENCE = "http://127.0.0.1:9/ollama-gemma"
TOKEN_CREATOR = "roles/iam.serviceAccountTokenCreator"


def _account(local_gcp: LocalGcp, session: AuthorizedSession, account_id: str) -> str:
    url = f"{local_gcp.base_url}/v1/projects/{PROJECT}/serviceAccounts"
    r = session.post(url, json={"accountId": account_id})
    assert r.status_code == 200, r.text
    return str(r.json()["email"])


def _grant(local_gcp: LocalGcp, session: AuthorizedSession, email: str, member: str) -> None:
    base = f"{local_gcp.base_url}/v1/projects/{PROJECT}/serviceAccounts/{email}"
    policy = session.post(f"{base}:getIamPolicy").json()
    policy.setdefault("bindings", []).append({"role": TOKEN_CREATOR, "members": [member]})
    r = session.post(f"{base}:setIamPolicy", json={"policy": policy})
    assert r.status_code == 200, r.text


@pytest.fixture
def session(local_gcp: LocalGcp) -> AuthorizedSession:
    local_gcp.enable("iamcredentials.googleapis.com", "iam.googleapis.com")
    return AuthorizedSession(local_gcp.credentials())


def _gen(local_gcp: LocalGcp, email: str, verb: str) -> str:
    return f"{local_gcp.base_url}/v1/projects/-/serviceAccounts/{email}:{verb}"


def test_tokens_need_the_token_creator_role_on_the_account(
    local_gcp: LocalGcp, session: AuthorizedSession
) -> None:
    target = _account(local_gcp, session, "deployer")
    body: dict[str, Any] = {"scope": SCOPES}
    denied = session.post(_gen(local_gcp, target, "generateAccessToken"), json=body)
    assert denied.status_code == 403
    error = denied.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert error["message"] == (
        "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."
    )
    assert error["details"][0]["reason"] == "IAM_PERMISSION_DENIED"
    assert error["details"][0]["metadata"] == {"permission": "iam.serviceAccounts.getAccessToken"}
    id_denied = session.post(_gen(local_gcp, target, "generateIdToken"), json={"audience": "a"})
    assert id_denied.status_code == 403
    assert "iam.serviceAccounts.getOpenIdToken" in id_denied.json()["error"]["message"]

    _grant(local_gcp, session, target, f"serviceAccount:{admin_email(PROJECT)}")
    granted = session.post(_gen(local_gcp, target, "generateAccessToken"), json=body)
    assert granted.status_code == 200, granted.text
    assert set(granted.json()) == {"accessToken", "expireTime"}
    signer = local_gcp.emulator.signer
    assert signer.verify_access_token(granted.json()["accessToken"]) == target
    r = session.post(
        _gen(local_gcp, target, "generateIdToken"),
        json={"audience": AUDIENCE, "includeEmail": True},
    )
    assert signer.verify_id_token(r.json()["token"], AUDIENCE)["email"] == target

    assert httpx.post(_gen(local_gcp, target, "generateIdToken"), json={}).status_code == 401
    unknown = session.post(_gen(local_gcp, target, "generateIdToken"), json={"audiences": ["a"]})
    assert unknown.status_code == 400
    assert 'Unknown name "audiences"' in unknown.json()["error"]["message"]
    missing = session.post(
        _gen(local_gcp, f"nobody1@{PROJECT}.iam.gserviceaccount.com", "generateIdToken")
    )
    assert missing.status_code == 404


def test_a_recreated_account_starts_with_an_empty_policy(
    local_gcp: LocalGcp, session: AuthorizedSession
) -> None:
    target = _account(local_gcp, session, "deployer")
    _grant(local_gcp, session, target, "user:dev@example.com")
    url = f"{local_gcp.base_url}/v1/projects/{PROJECT}/serviceAccounts/{target}"
    assert session.delete(url).status_code == 200
    assert session.post(f"{url}:getIamPolicy").status_code == 404
    _account(local_gcp, session, "deployer")
    assert "bindings" not in session.post(f"{url}:getIamPolicy").json()


def test_delegation_needs_the_role_at_every_hop(
    local_gcp: LocalGcp, session: AuthorizedSession
) -> None:
    middle = _account(local_gcp, session, "middle")
    target = _account(local_gcp, session, "deployer")
    body = {"scope": SCOPES, "delegates": [f"projects/-/serviceAccounts/{middle}"]}
    _grant(local_gcp, session, middle, f"serviceAccount:{admin_email(PROJECT)}")
    assert (
        session.post(_gen(local_gcp, target, "generateAccessToken"), json=body).status_code == 403
    )
    _grant(local_gcp, session, target, f"serviceAccount:{middle}")
    r = session.post(_gen(local_gcp, target, "generateAccessToken"), json=body)
    assert r.status_code == 200, r.text


def test_google_auth_impersonation_and_tasks_identity(
    local_gcp: LocalGcp, session: AuthorizedSession
) -> None:
    target = _account(local_gcp, session, "deployer")
    creds = impersonated_credentials.Credentials(
        source_credentials=local_gcp.credentials(),
        target_principal=target,
        target_scopes=SCOPES,
        iam_endpoint_override=_gen(local_gcp, target, "generateAccessToken"),
    )
    with pytest.raises(auth_exceptions.RefreshError):
        creds.refresh(gar.Request())
    _grant(local_gcp, session, target, f"serviceAccount:{admin_email(PROJECT)}")
    creds.refresh(gar.Request())
    assert local_gcp.emulator.signer.verify_access_token(creds.token) == target

    who = identify(creds, iam_credentials_endpoint=local_gcp.base_url)
    assert who.member == f"serviceAccount:{target}"
    token, _ = who.id_tokens.fetch(AUDIENCE)
    assert local_gcp.emulator.signer.verify_id_token(token, AUDIENCE)["email"] == target
