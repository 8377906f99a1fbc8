"""`POST /token`: the jwt-bearer grant google-auth sends for a service-account key file whose
`token_uri` points here. The assertion's signature is checked against the key file's public key;
`scope` gets an access token, `target_audience` an ID token. The refresh-token grant of user
credentials (`gcloud auth application-default login`) is `user_credentials.refresh_grant`. Errors
in OAuth's own shape (RFC 6749 §5.2), not Google's API error shape.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from starlette.responses import JSONResponse, Response

from emulator.gcp.auth import user_credentials
from emulator.gcp.auth.tokens import InvalidToken, TokenSigner, admin_email
from emulator.gcp.routing import Call

GOOGLE_TOKEN_URIS = (
    "https://oauth2.googleapis.com/token",
    "https://www.googleapis.com/oauth2/v4/token",
)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def oauth_error(error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def access_token_json(signer: TokenSigner, email: str, lifetime: int) -> dict[str, Any]:
    """An access token as Google's token endpoint and metadata server return it."""
    return {
        "access_token": signer.mint_access_token(email, lifetime),
        "expires_in": lifetime,
        "token_type": "Bearer",
    }


def token(call: Call) -> Response:
    signer, config = call.emulator.signer, call.emulator.config
    lifetime = config.token_lifetime_seconds
    form = {k: v[0] for k, v in parse_qs(call.raw_body.decode(errors="replace")).items()}
    if form.get("grant_type") == user_credentials.REFRESH_GRANT:
        return user_credentials.refresh_grant(signer, form, lifetime)
    if form.get("grant_type") != JWT_BEARER:
        return oauth_error("unsupported_grant_type", "Invalid grant_type.")
    own_uri = str(call.request.url).split("?", 1)[0]
    try:
        claims = signer.verify_assertion(form.get("assertion", ""), [own_uri, *GOOGLE_TOKEN_URIS])
    except InvalidToken:
        return oauth_error("invalid_grant", "Invalid JWT Signature.")
    email = str(claims.get("iss", ""))
    if email != admin_email(config.project):
        return oauth_error("invalid_grant", "Invalid JWT: the issuer is not the key's account.")
    if claims.get("target_audience"):
        id_token = signer.mint_id_token(email, str(claims["target_audience"]), lifetime)
        return JSONResponse({"id_token": id_token})
    if claims.get("scope"):
        return JSONResponse(access_token_json(signer, email, lifetime))
    return oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
