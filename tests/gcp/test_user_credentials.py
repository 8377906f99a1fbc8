"""User ADC (`gcloud auth application-default login`) against the emulator's token endpoint, and
the Cloud Run ingress accepting the user's ID token, with google-auth's own user credentials."""

from __future__ import annotations

import google.auth.transport.requests as gar
import pytest
from google.auth import exceptions as auth_exceptions
from google.cloud import service_usage_v1
from google.oauth2 import credentials as user_credentials

from emulator.gcp.auth.user_credentials import (
    ADC_CLIENT_ID,
    USER_EMAIL,
    authorized_user_info,
)
from emulator.gcp.ingress import IngressRules, check_access
from tests.gcp.conftest import PROJECT, LocalGcp

SERVICE_URL = "http://127.0.0.1:9"


def _user(
    local_gcp: LocalGcp, scopes: list[str] | None = None, **changes: str
) -> user_credentials.Credentials:
    info = {**authorized_user_info(local_gcp.emulator.signer, PROJECT), **changes}
    # google-auth pins authorized_user files to oauth2.googleapis.com; tasks.clients points them
    # at the emulator the same way.
    creds = user_credentials.Credentials.from_authorized_user_info(info, scopes=scopes)
    return creds.with_token_uri(f"{local_gcp.base_url}/token")


def test_the_adc_file_is_what_gcloud_writes(local_gcp: LocalGcp) -> None:
    info = authorized_user_info(local_gcp.emulator.signer, PROJECT)
    assert info["type"] == "authorized_user"
    assert info["client_id"] == ADC_CLIENT_ID
    assert info["quota_project_id"] == PROJECT
    assert set(info) == {
        "account",
        "client_id",
        "client_secret",
        "quota_project_id",
        "refresh_token",
        "type",
        "universe_domain",
    }


def test_refresh_returns_access_and_id_token_for_the_user(local_gcp: LocalGcp) -> None:
    creds = _user(local_gcp)
    creds.refresh(gar.Request())
    signer = local_gcp.emulator.signer
    assert signer.verify_access_token(creds.token) == USER_EMAIL
    claims = signer.verify_id_token(creds.id_token, ADC_CLIENT_ID)  # aud = the OAuth client
    assert (claims["email"], claims["email_verified"], claims["azp"]) == (
        USER_EMAIL,
        True,
        ADC_CLIENT_ID,
    )
    local_gcp.enable("serviceusage.googleapis.com")
    client = service_usage_v1.ServiceUsageClient(
        credentials=creds,
        transport="rest",
        client_options={"api_endpoint": local_gcp.base_url},
    )
    name = f"projects/{PROJECT}/services/run.googleapis.com"
    assert client.get_service(request={"name": name}).name.endswith("run.googleapis.com")


def test_narrowed_scope_gets_no_id_token_and_widening_is_refused(local_gcp: LocalGcp) -> None:
    narrowed = _user(local_gcp, ["https://www.googleapis.com/auth/cloud-platform"])
    narrowed.refresh(gar.Request())
    assert narrowed.token and narrowed.id_token is None
    wider = _user(local_gcp, ["https://www.googleapis.com/auth/gmail.readonly"])
    with pytest.raises(auth_exceptions.RefreshError, match="invalid_scope"):
        wider.refresh(gar.Request())


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"client_secret": "GOCSPX-wrong"}, "invalid_client"),
        ({"client_id": "1.apps.googleusercontent.com"}, "invalid_client"),
        ({"refresh_token": "1//forged.token"}, "invalid_grant"),
    ],
)
def test_bad_client_or_refresh_token_is_refused(
    local_gcp: LocalGcp, change: dict[str, str], error: str
) -> None:
    with pytest.raises(auth_exceptions.RefreshError, match=error):
        _user(local_gcp, **change).refresh(gar.Request())


def test_ingress_accepts_the_user_token_only_for_an_invoker(local_gcp: LocalGcp) -> None:
    creds = _user(local_gcp)
    creds.refresh(gar.Request())
    headers = {"authorization": f"Bearer {creds.id_token}"}
    verify = local_gcp.emulator.signer.verify_id_token
    allowed = IngressRules(audiences=(SERVICE_URL,), members=frozenset({f"user:{USER_EMAIL}"}))
    assert check_access(headers, "/api/tags", allowed, verify) is None
    others = IngressRules(audiences=(SERVICE_URL,), members=frozenset({"user:x@example.com"}))
    denial = check_access(headers, "/api/tags", others, verify)
    assert denial is not None and denial.status == 403
    # Another OAuth client's token for the same user is not one Cloud Run accepts.
    from emulator.gcp.auth.user_credentials import mint_user_id_token

    foreign = mint_user_id_token(
        local_gcp.emulator.signer, USER_EMAIL, "1.apps.googleusercontent.com", 60
    )
    denial = check_access({"authorization": f"Bearer {foreign}"}, "/", allowed, verify)
    assert denial is not None and denial.status == 401
