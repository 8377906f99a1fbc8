"""The auth routes: the OAuth token endpoint, the metadata server, IAM Credentials
`generateIdToken` and the certs that verify the emulator's ID tokens.

- `POST /v1/projects/-/serviceAccounts/{email}:generateIdToken` (iamcredentials.googleapis.com);
- `GET /oauth2/v3/certs` (JWKS) and `/oauth2/v1/certs` (PEM).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from emulator.gcp.auth import metadata, oauth
from emulator.gcp.auth.keys import self_signed_cert
from emulator.gcp.auth.tokens import admin_email
from emulator.gcp.errors import invalid_argument, not_found
from emulator.gcp.iam import IamBackend
from emulator.gcp.routing import Call, Route

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

IAM_CREDENTIALS = "iamcredentials.googleapis.com"


def generate_id_token(call: Call) -> dict[str, Any]:
    emulator, account = call.emulator, call.param("account")
    default = admin_email(emulator.config.project)
    found = emulator.get(IamBackend).find(call.param("project"), account)
    email = found["email"] if found else account if account == default else None
    if email is None:
        raise not_found(f"Not found; Gaia id not found for email {account}")
    audience = str(call.body.get("audience") or "")
    if not audience:
        raise invalid_argument("audience must be set.")
    include_email = bool(call.body.get("includeEmail", False))
    lifetime = emulator.config.token_lifetime_seconds
    return {"token": emulator.signer.mint_id_token(email, audience, lifetime, include_email)}


def jwks(call: Call) -> Response:
    return JSONResponse(call.emulator.signer.jwks())


def pem_certs(call: Call) -> Response:
    signer = call.emulator.signer
    return JSONResponse({signer.signing_kid: self_signed_cert(signer.signing_key)})


def routes(emulator: Emulator) -> list[Route]:
    # Google serves these without credentials: the OAuth token endpoint, the metadata server and
    # the certs. IAM Credentials is an ordinary API: it requires an access token.
    accounts = "/computeMetadata/v1/instance/service-accounts/{account}"
    return [
        Route("POST", "/token", oauth.token, anonymous=True),
        Route("GET", "/", metadata.ping, anonymous=True),
        Route("GET", accounts, metadata.account_info, anonymous=True),
        Route("GET", accounts + "/{item}", metadata.account_item, anonymous=True),
        Route("GET", "/computeMetadata/v1/project/{item}", metadata.project_item, anonymous=True),
        Route(
            "GET",
            "/computeMetadata/v1/universe/universe-domain",
            metadata.universe,
            anonymous=True,
        ),
        Route(
            "POST",
            "/v1/projects/{project}/serviceAccounts/{account}:generateIdToken",
            generate_id_token,
            IAM_CREDENTIALS,
        ),
        Route("GET", "/oauth2/v3/certs", jwks, anonymous=True),
        Route("GET", "/oauth2/v1/certs", pem_certs, anonymous=True),
    ]
