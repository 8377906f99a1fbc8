"""A user's Application Default Credentials, as `gcloud auth application-default login` leaves them.

- `authorized_user_info(...)`: the `authorized_user` ADC file gcloud writes (`client_id`,
  `client_secret`, `refresh_token`, `quota_project_id`, `type`, `universe_domain`); `python -m
  emulator.gcp` writes it next to the service-account key and names it `OLLAMA_CLOUDRUN_USER_ADC`
  in its env file.
  The client is gcloud's ADC OAuth client, `764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.
  googleusercontent.com` (google-auth `_cloud_sdk.CLOUD_SDK_CLIENT_ID`).
- `refresh_grant(...)`: `POST /token` with `grant_type=refresh_token` as google-auth sends it
  (`google/oauth2/_client.py` `refresh_grant`: client_id, client_secret, refresh_token, optional
  scope). The answer carries an access token and, as Google's does for an `openid` login, an
  `id_token` whose `aud` (and `azp`) is the OAuth client id and whose `email`/`email_verified` name
  the user; google-auth keeps it as `Credentials.id_token` (`google/oauth2/credentials.py`
  `refresh`: `self._id_token = grant_response.get("id_token")`).
- `CLOUD_RUN_USER_AUDIENCES`: Cloud Run's ingress accepts ID tokens whose audience is gcloud's
  OAuth clients, not only the service URL: `gcloud auth print-identity-token` (aud
  `32555940559.apps.googleusercontent.com`) is how Cloud Run's "authenticating developers" page
  calls a private service, and ADC user tokens (aud = the ADC client id) are accepted too
  (googleapis/google-auth-library-java#469; GoogleCloudPlatform/cloud-run-proxy's
  `idTokenFromDefaultTokenSource` sends exactly that `id_token`, #10).

The refresh token and client secret are HMACs under the emulator's access-token key (kept in the
state dir, never in the repo), so they survive restarts and no new secret is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

from google.auth import crypt, jwt
from starlette.responses import JSONResponse, Response

from emulator.gcp.auth.keys import b64url as _b64
from emulator.gcp.auth.keys import numeric_id
from emulator.gcp.auth.keys import unb64url as _unb64
from emulator.gcp.auth.tokens import ISSUER

if TYPE_CHECKING:
    from emulator.gcp.auth.tokens import TokenSigner

REFRESH_GRANT = "refresh_token"
USER_ADC_FILE = "user-adc.json"
USER_ADC_ENV = "OLLAMA_CLOUDRUN_USER_ADC"
USER_EMAIL = "emulator-user@example.com"
ADC_CLIENT_ID = "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com"
GCLOUD_CLIENT_ID = "32555940559.apps.googleusercontent.com"
CLOUD_RUN_USER_AUDIENCES = (ADC_CLIENT_ID, GCLOUD_CLIENT_ID)
# The scopes `gcloud auth application-default login` asks for by default (its --scopes help).
GCLOUD_ADC_SCOPES = (
    "openid",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/sqlservice.login",
)


def _mac(signer: TokenSigner, purpose: str, payload: str) -> str:
    digest = hmac.new(signer.access_secret, f"{purpose}:{payload}".encode(), hashlib.sha256)
    return _b64(digest.digest())


def client_secret(signer: TokenSigner) -> str:
    return "GOCSPX-" + _mac(signer, "client-secret", ADC_CLIENT_ID)[:28]


def refresh_token(signer: TokenSigner, email: str, scopes: tuple[str, ...]) -> str:
    payload = _b64(json.dumps({"e": email, "s": " ".join(scopes)}).encode())
    return f"1//{payload}.{_mac(signer, 'refresh', payload)}"


def _grant_of(signer: TokenSigner, token: str) -> tuple[str, list[str]] | None:
    """(email, granted scopes) of a refresh token this emulator issued; None otherwise."""
    body = token.removeprefix("1//")
    payload, _, mac = body.partition(".")
    if not token.startswith("1//") or not hmac.compare_digest(
        mac, _mac(signer, "refresh", payload)
    ):
        return None
    data = json.loads(_unb64(payload))
    return str(data["e"]), str(data["s"]).split()


def authorized_user_info(
    signer: TokenSigner, project: str, email: str = USER_EMAIL
) -> dict[str, str]:
    """The ADC file of `gcloud auth application-default login` for `email`."""
    return {
        "account": "",
        "client_id": ADC_CLIENT_ID,
        "client_secret": client_secret(signer),
        "quota_project_id": project,
        "refresh_token": refresh_token(signer, email, GCLOUD_ADC_SCOPES),
        "type": "authorized_user",
        "universe_domain": "googleapis.com",
    }


def mint_user_id_token(signer: TokenSigner, email: str, client_id: str, lifetime: int) -> str:
    """An OpenID Connect ID token for a user signed in through `client_id`."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "azp": client_id,
        "aud": client_id,
        "sub": numeric_id(email),
        "email": email,
        "email_verified": True,
        "iat": now,
        "exp": now + lifetime,
    }
    key = crypt.RSASigner.from_string(signer.signing_key, key_id=signer.signing_kid)
    return jwt.encode(key, claims).decode()


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    # RFC 6749 §5.2, the shape Google's token endpoint answers (google-auth `_client`
    # `_handle_error_response` reads `error` and `error_description`).
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def refresh_grant(signer: TokenSigner, form: dict[str, str], lifetime: int) -> Response:
    """The token endpoint's answer to a refresh-token grant."""
    if form.get("client_id") != ADC_CLIENT_ID:
        return _oauth_error("invalid_client", "The OAuth client was not found.", 401)
    if not hmac.compare_digest(form.get("client_secret", ""), client_secret(signer)):
        return _oauth_error("invalid_client", "Unauthorized", 401)
    grant = _grant_of(signer, form.get("refresh_token", ""))
    if grant is None:
        return _oauth_error("invalid_grant", "Bad Request")
    email, granted = grant
    asked = form.get("scope", "").split() or granted
    if set(asked) - set(granted):  # RFC 6749 §6: a refresh may narrow the grant, never widen it
        return _oauth_error("invalid_scope", "Bad Request")
    body: dict[str, Any] = {
        "access_token": signer.mint_access_token(email, lifetime),
        "expires_in": lifetime,
        "scope": " ".join(asked),
        "token_type": "Bearer",
    }
    # OIDC Core §12.2: the refreshed response may carry an ID token; the emulator sends one when
    # the effective scope includes openid (the stricter reading), so a client that narrows the
    # scope to cloud-platform and still expects an ID token fails here as it might on Google.
    if "openid" in asked:
        body["id_token"] = mint_user_id_token(signer, email, ADC_CLIENT_ID, lifetime)
    return JSONResponse(body)
