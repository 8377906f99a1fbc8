"""The auth routes: the OAuth token endpoint, the metadata server and the certs that verify the
emulator's ID tokens (`GET /oauth2/v3/certs` JWKS, `/oauth2/v1/certs` PEM). IAM Credentials
(`generateIdToken`, `generateAccessToken`) is `emulator.gcp.iam_credentials`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response

from emulator.gcp.auth import metadata, oauth
from emulator.gcp.auth.keys import self_signed_cert
from emulator.gcp.routing import Call, Route

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator


def jwks(call: Call) -> Response:
    return JSONResponse(call.emulator.signer.jwks())


def pem_certs(call: Call) -> Response:
    signer = call.emulator.signer
    return JSONResponse({signer.signing_kid: self_signed_cert(signer.signing_key)})


def routes(emulator: Emulator) -> list[Route]:
    # Google serves these without credentials: the OAuth token endpoint, the metadata server and
    # the certs. (IAM Credentials is an ordinary API requiring an access token: iam_credentials.)
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
        Route("GET", "/oauth2/v3/certs", jwks, anonymous=True),
        Route("GET", "/oauth2/v1/certs", pem_certs, anonymous=True),
    ]
