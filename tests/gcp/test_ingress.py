"""The ingress's access rules (pure) with real RS256 ID tokens from the emulator's signer."""

from __future__ import annotations

import pytest

from emulator.gcp.auth import TokenSigner
from emulator.gcp.ingress import IngressRules, bearer, check_access

URI = "http://127.0.0.1:9"
SA = "caller@p.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def signer() -> TokenSigner:
    return TokenSigner.generate()


def rules(*members: str, disabled: bool = False) -> IngressRules:
    return IngressRules(audiences=(URI,), members=frozenset(members), invoker_iam_disabled=disabled)


def status(signer: TokenSigner, headers: dict[str, str], r: IngressRules) -> int:
    denial = check_access(headers, "/api/tags", r, signer.verify_id_token)
    return 200 if denial is None else denial.status


def test_tokens_audience_expiry_and_membership(signer: TokenSigner) -> None:
    good = {"authorization": f"Bearer {signer.mint_id_token(SA, URI)}"}
    member = rules(f"serviceAccount:{SA}")
    assert status(signer, {}, member) == 401
    assert status(signer, {"authorization": "Basic abc"}, member) == 401
    assert status(signer, {"authorization": "Bearer x.y.z"}, member) == 401
    other_aud = {"authorization": f"Bearer {signer.mint_id_token(SA, 'https://x.run.app')}"}
    assert status(signer, other_aud, member) == 401
    expired = {"authorization": f"Bearer {signer.mint_id_token(SA, URI, lifetime=-600)}"}
    assert status(signer, expired, member) == 401
    foreign = TokenSigner.generate().mint_id_token(SA, URI)
    assert status(signer, {"authorization": f"Bearer {foreign}"}, member) == 401
    assert status(signer, good, member) == 200
    assert status(signer, good, rules("user:someone@example.com")) == 403
    assert status(signer, good, rules("allAuthenticatedUsers")) == 200
    assert status(signer, {}, rules("allAuthenticatedUsers")) == 401
    assert status(signer, {}, rules("allUsers")) == 200
    assert status(signer, {}, rules(disabled=True)) == 200


def test_serverless_authorization_header_wins(signer: TokenSigner) -> None:
    token = signer.mint_id_token(SA, URI)
    headers = {"authorization": "Bearer app-token", "x-serverless-authorization": f"Bearer {token}"}
    assert bearer(headers) == token
    assert status(signer, headers, rules(f"serviceAccount:{SA}")) == 200
    denial = check_access({}, "/api/tags", rules(), signer.verify_id_token)
    assert denial is not None and "<code>/api/tags</code>" in denial.body
    assert "www-authenticate" in denial.headers
