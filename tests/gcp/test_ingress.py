"""The ingress's access rules (pure) with real RS256 ID tokens from the emulator's signer:
no token → 403, bad token → 401, no invoker → 403, allowed → 200, as on Cloud Run."""

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
    assert status(signer, {}, member) == 403  # no token: Cloud Run's "Forbidden"
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
    assert status(signer, {}, rules("allAuthenticatedUsers")) == 403
    assert status(signer, {}, rules("allUsers")) == 200
    assert status(signer, {}, rules(disabled=True)) == 200
    # A public service does not look at the token at all.
    assert status(signer, {"authorization": "Bearer x.y.z"}, rules("allUsers")) == 200


def test_serverless_authorization_header_wins(signer: TokenSigner) -> None:
    token = signer.mint_id_token(SA, URI)
    headers = {"authorization": "Bearer app-token", "x-serverless-authorization": f"Bearer {token}"}
    assert bearer(headers) == token
    assert status(signer, headers, rules(f"serviceAccount:{SA}")) == 200
    denial = check_access({}, "/api/tags", rules(), signer.verify_id_token)
    assert denial is not None and denial.status == 403
    assert (
        "<title>403 Forbidden</title>" in denial.body
        and "<h1>Error: Forbidden</h1>" in denial.body
        and "Your client does not have permission to get URL <code>/api/tags</code> from this "
        "server."
        in denial.body
    )
    bad = {"authorization": "Bearer x.y.z"}
    denial = check_access(bad, "/api/tags", rules(), signer.verify_id_token)
    assert denial is not None and denial.status == 401
    assert "<h1>Error: Unauthorized</h1>" in denial.body
    assert "permission to the requested URL <code>/api/tags</code>." in denial.body
    assert denial.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_a_new_member_is_honoured_only_from_its_propagation_time(signer: TokenSigner) -> None:
    now = [100.0]
    member = f"serviceAccount:{SA}"
    r = IngressRules(
        audiences=(URI,),
        members=frozenset({member, "allUsers"}),
        honoured_from={member: 130.0, "allUsers": 160.0},
        clock=lambda: now[0],
    )
    good = {"authorization": f"Bearer {signer.mint_id_token(SA, URI)}"}
    assert status(signer, good, r) == 403  # as for a caller without the role
    assert status(signer, {}, r) == 403
    now[0] = 130.0
    assert status(signer, good, r) == 200
    assert status(signer, {}, r) == 403  # not public yet
    now[0] = 160.0
    assert status(signer, {}, r) == 200
