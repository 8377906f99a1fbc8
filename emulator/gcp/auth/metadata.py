"""The metadata server (`GCE_METADATA_HOST`/`GCE_METADATA_IP` = this host): `GET /` and
`/computeMetadata/v1/...`, which require the `Metadata-Flavor: Google` header as the real one
does. Its `default` service account is the generated key file's account.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from emulator.gcp.auth.oauth import access_token_json
from emulator.gcp.auth.tokens import admin_email
from emulator.gcp.projects import project_number
from emulator.gcp.routing import Call

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def _metadata(body: str | dict[str, Any], status: int = 200) -> Response:
    headers = {"Metadata-Flavor": "Google"}
    if isinstance(body, dict):
        return JSONResponse(body, status_code=status, headers=headers)
    return PlainTextResponse(body, status_code=status, headers=headers)


def _denied(call: Call) -> Response | None:
    """403 without the `Metadata-Flavor: Google` header (the real server's text)."""
    if call.request.headers.get("metadata-flavor") == "Google":
        return None
    path = call.request.url.path
    return _metadata(
        f"Your client does not have permission to get URL {path} from this server. "
        "Missing Metadata-Flavor:Google header.",
        403,
    )


def _account(call: Call) -> str | Response:
    """The email of the `{account}` asked for, or the response refusing the call."""
    if (denied := _denied(call)) is not None:
        return denied
    default = admin_email(call.emulator.config.project)
    return default if call.param("account") in ("default", default) else _metadata("Not Found", 404)


def ping(call: Call) -> Response:
    return _metadata("computeMetadata/\n")


def account_info(call: Call) -> Response:
    email = _account(call)
    if isinstance(email, Response):
        return email
    if call.query.get("recursive", "").lower() == "true":
        return _metadata({"aliases": ["default"], "email": email, "scopes": [CLOUD_PLATFORM]})
    return _metadata("aliases\nemail\nidentity\nscopes\ntoken\n")


def account_item(call: Call) -> Response:
    email = _account(call)
    if isinstance(email, Response):
        return email
    signer, lifetime = call.emulator.signer, call.emulator.config.token_lifetime_seconds
    item = call.param("item")
    if item == "identity":
        audience = call.query.get("audience", "")
        if not audience:
            return _metadata("non-empty audience parameter required", 400)
        return _metadata(signer.mint_id_token(email, audience, lifetime))
    if item == "token":
        return _metadata(access_token_json(signer, email, lifetime))
    texts = {"email": email, "scopes": f"{CLOUD_PLATFORM}\n", "aliases": "default\n"}
    return _metadata(texts[item]) if item in texts else _metadata("Not Found", 404)


def project_item(call: Call) -> Response:
    if (denied := _denied(call)) is not None:
        return denied
    project = call.emulator.config.project
    texts = {"project-id": project, "numeric-project-id": str(project_number(project))}
    item = call.param("item")
    return _metadata(texts[item]) if item in texts else _metadata("Not Found", 404)


def universe(call: Call) -> Response:
    if (denied := _denied(call)) is not None:
        return denied
    return _metadata("googleapis.com")
