"""IAM v1 service accounts over REST with google-auth's AuthorizedSession (as the project)."""

from __future__ import annotations

import pytest
from google.api_core import exceptions
from google.auth.transport.requests import AuthorizedSession

from tests.gcp.conftest import PROJECT, LocalGcp


@pytest.fixture
def session(local_gcp: LocalGcp) -> AuthorizedSession:
    local_gcp.enable("iam.googleapis.com")
    return AuthorizedSession(local_gcp.credentials())


def _check(response: object) -> dict[str, object]:
    if response.status_code >= 400:  # type: ignore[attr-defined]
        raise exceptions.from_http_response(response)  # type: ignore[arg-type]
    return response.json()  # type: ignore[attr-defined, no-any-return]


def test_create_get_list_delete(local_gcp: LocalGcp, session: AuthorizedSession) -> None:
    base = f"{local_gcp.base_url}/v1/projects/{PROJECT}/serviceAccounts"
    body = {"accountId": "ollama-sa", "serviceAccount": {"displayName": "Ollama"}}
    sa = _check(session.post(base, json=body))
    email = f"ollama-sa@{PROJECT}.iam.gserviceaccount.com"
    assert sa["email"] == email
    assert sa["name"] == f"projects/{PROJECT}/serviceAccounts/{email}"
    assert sa["displayName"] == "Ollama"
    assert str(sa["uniqueId"]).isdigit()
    assert _check(session.get(f"{base}/{email}"))["uniqueId"] == sa["uniqueId"]
    by_id = f"{local_gcp.base_url}/v1/projects/-/serviceAccounts/{sa['uniqueId']}"
    assert _check(session.get(by_id))["email"] == email
    assert [a["email"] for a in _check(session.get(base))["accounts"]] == [email]  # type: ignore[union-attr]
    with pytest.raises(exceptions.Conflict) as info:
        _check(session.post(base, json=body))
    assert "already exists" in info.value.message
    _check(session.delete(f"{base}/{email}"))
    with pytest.raises(exceptions.NotFound):
        _check(session.get(f"{base}/{email}"))
    with pytest.raises(exceptions.NotFound):
        _check(session.delete(f"{base}/{email}"))


BAD_IDS = ["short", "a" * 31, "1starts-digit", "ends-with-", "Upper-case"]


@pytest.mark.parametrize("account_id", BAD_IDS)
def test_account_id_rules(local_gcp: LocalGcp, session: AuthorizedSession, account_id: str) -> None:
    base = f"{local_gcp.base_url}/v1/projects/{PROJECT}/serviceAccounts"
    with pytest.raises(exceptions.BadRequest):
        _check(session.post(base, json={"accountId": account_id}))


def test_iam_disabled_is_service_disabled(local_gcp: LocalGcp) -> None:
    session = AuthorizedSession(local_gcp.credentials())
    response = session.get(f"{local_gcp.base_url}/v1/projects/{PROJECT}/serviceAccounts")
    with pytest.raises(exceptions.Forbidden) as info:
        _check(response)
    assert info.value.reason == "SERVICE_DISABLED"
    assert info.value.metadata["service"] == "iam.googleapis.com"
