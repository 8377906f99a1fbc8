"""Tokens: the OAuth token endpoint, the metadata server, IAM Credentials `generateIdToken`.

- `POST /token`: the jwt-bearer grant google-auth sends for a service-account key file whose
  `token_uri` points here. The assertion's signature is checked against the key file's public key;
  `scope` gets an access token, `target_audience` an ID token.
- The metadata server (`GCE_METADATA_HOST`/`GCE_METADATA_IP` = this host): `GET /`,
  `/computeMetadata/v1/...` (requires the `Metadata-Flavor: Google` header, as the real one does).
- `POST /v1/projects/-/serviceAccounts/{email}:generateIdToken` (iamcredentials.googleapis.com).
- `GET /oauth2/v3/certs` (JWKS) and `/oauth2/v1/certs` (PEM) to verify the ID tokens.

ID tokens are RS256 JWTs from a key generated at run time and kept in the state dir (never in the
repo). Access tokens are opaque `ya29.` strings, HMAC-signed so they survive restarts. No token is
ever logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt
from google.auth.exceptions import GoogleAuthError
from starlette.responses import JSONResponse, PlainTextResponse, Response

from emulator.gcp.errors import invalid_argument, invalid_credentials, not_found
from emulator.gcp.files import write_json_atomic
from emulator.gcp.projects import project_number
from emulator.gcp.routing import Call, Route

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

ISSUER = "https://accounts.google.com"
GOOGLE_TOKEN_URIS = (
    "https://oauth2.googleapis.com/token",
    "https://www.googleapis.com/oauth2/v4/token",
)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ADMIN_ACCOUNT_ID = "emulator-admin"
KEYS_FILE = "keys.json"
SERVICE_ACCOUNT_FILE = "service-account.json"


class InvalidToken(ValueError):
    """A token with a bad signature, audience, issuer or expiry."""


def admin_email(project: str) -> str:
    """The service account of the generated key file and of the metadata server's `default`."""
    return f"{ADMIN_ACCOUNT_ID}@{project}.iam.gserviceaccount.com"


def numeric_id(email: str) -> str:
    digest = hashlib.sha256(email.encode()).hexdigest()
    return str(100_000_000_000_000_000_000 + int(digest, 16) % 900_000_000_000_000_000_000)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public_pem(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _self_signed_cert(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "emulator.gcp token signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class TokenSigner:
    """Mints and verifies the emulator's ID tokens and access tokens; holds the key-file key."""

    signing_key: str  # PEM private key for ID tokens
    signing_kid: str
    access_secret: bytes  # HMAC key for access tokens
    sa_key: str  # PEM private key of the generated service-account key file
    sa_key_id: str

    @classmethod
    def generate(cls) -> TokenSigner:
        return cls(
            _new_key(),
            secrets.token_hex(20),
            secrets.token_bytes(32),
            _new_key(),
            secrets.token_hex(20),
        )

    @classmethod
    def load_or_create(cls, state_dir: Path | None) -> TokenSigner:
        """Keys from `state_dir/keys.json` (mode 0600), generated on first use."""
        path = state_dir / KEYS_FILE if state_dir else None
        if path and path.exists():
            data = json.loads(path.read_text())
            return cls(
                data["signing_key"],
                data["signing_kid"],
                bytes.fromhex(data["access_secret"]),
                data["sa_key"],
                data["sa_key_id"],
            )
        signer = cls.generate()
        if path:
            data = {
                "signing_key": signer.signing_key,
                "signing_kid": signer.signing_kid,
                "access_secret": signer.access_secret.hex(),
                "sa_key": signer.sa_key,
                "sa_key_id": signer.sa_key_id,
            }
            write_json_atomic(path, data, mode=0o600)
        return signer

    # -- ID tokens -------------------------------------------------------------------------

    def mint_id_token(
        self, email: str, audience: str, lifetime: int = 3600, include_email: bool = True
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": audience,
            "azp": numeric_id(email),
            "sub": numeric_id(email),
            "iat": now,
            "exp": now + lifetime,
        }
        if include_email:
            claims.update(email=email, email_verified=True)
        signer = crypt.RSASigner.from_string(self.signing_key, key_id=self.signing_kid)
        return jwt.encode(signer, claims).decode()

    def verify_id_token(self, token: str, audience: str) -> dict[str, Any]:
        """Claims of a valid ID token for `audience`; `InvalidToken` otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, certs={self.signing_kid: self.public_key_pem}, audience=audience
            )
        except ValueError as exc:
            raise InvalidToken(str(exc)) from None
        if claims.get("iss") != ISSUER:
            raise InvalidToken(f"wrong issuer {claims.get('iss')!r}")
        return claims

    @property
    def public_key_pem(self) -> str:
        return _public_pem(self.signing_key)

    def jwks(self) -> dict[str, Any]:
        key = serialization.load_pem_public_key(self.public_key_pem.encode())
        assert isinstance(key, rsa.RSAPublicKey)
        numbers = key.public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": self.signing_kid,
                    "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                    "e": _b64(numbers.e.to_bytes(3, "big")),
                }
            ]
        }

    # -- access tokens ---------------------------------------------------------------------

    def mint_access_token(self, email: str, lifetime: int = 3600) -> str:
        payload = _b64(json.dumps({"e": email, "x": int(time.time()) + lifetime}).encode())
        mac = hmac.new(self.access_secret, payload.encode(), hashlib.sha256).digest()
        return f"ya29.{payload}.{_b64(mac)}"

    def verify_access_token(self, token: str) -> str:
        """The email an access token was issued to; 401 UNAUTHENTICATED when invalid/expired."""
        parts = token.split(".")
        if len(parts) == 3 and parts[0] == "ya29":
            mac = hmac.new(self.access_secret, parts[1].encode(), hashlib.sha256).digest()
            if hmac.compare_digest(_b64(mac).encode(), parts[2].encode()):
                data = json.loads(_unb64(parts[1]))
                if data["x"] > time.time():
                    return str(data["e"])
                raise invalid_credentials("ACCESS_TOKEN_EXPIRED")
        elif len(parts) == 3:
            return self._verify_self_signed_jwt(token)
        raise invalid_credentials("ACCESS_TOKEN_TYPE_UNSUPPORTED")

    def _verify_self_signed_jwt(self, token: str) -> str:
        """Google accepts a JWT the service account signs itself (gapic clients send one:
        `always_use_jwt_access`); iss = sub = the email of the key file's account."""
        try:
            claims = jwt.decode(
                token,
                certs={self.sa_key_id: _public_pem(self.sa_key)},
                verify=True,
                audience=None,
                clock_skew_in_seconds=10,
            )
        except (ValueError, GoogleAuthError) as exc:
            expired = "expired" in str(exc).lower()
            raise invalid_credentials(
                "ACCESS_TOKEN_EXPIRED" if expired else "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            ) from None
        email = claims.get("iss")
        if (
            not isinstance(email, str)
            or email != claims.get("sub")
            or not email.startswith(f"{ADMIN_ACCOUNT_ID}@")
        ):
            raise invalid_credentials("ACCESS_TOKEN_TYPE_UNSUPPORTED")
        return email

    # -- the generated service-account key file ----------------------------------------------

    def service_account_info(self, project: str, token_uri: str) -> dict[str, str]:
        email = admin_email(project)
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": self.sa_key_id,
            "private_key": self.sa_key,
            "client_email": email,
            "client_id": numeric_id(email),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }

    def verify_assertion(self, assertion: str, audiences: list[str]) -> dict[str, Any]:
        """Claims of a jwt-bearer assertion signed with the key file's key."""
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                certs={self.sa_key_id: _public_pem(self.sa_key)},
                audience=audiences,
                clock_skew_in_seconds=10,
            )
        except ValueError as exc:
            raise InvalidToken(str(exc)) from None
        return claims


def _oauth_error(error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def _metadata(body: str | dict[str, Any], status: int = 200) -> Response:
    headers = {"Metadata-Flavor": "Google"}
    if isinstance(body, dict):
        return JSONResponse(body, status_code=status, headers=headers)
    return PlainTextResponse(body, status_code=status, headers=headers)


def routes(emulator: Emulator) -> list[Route]:
    signer = emulator.signer

    def lifetime() -> int:
        return emulator.config.token_lifetime_seconds

    def default_email() -> str:
        return admin_email(emulator.config.project)

    def token(call: Call) -> Response:
        form = {k: v[0] for k, v in parse_qs(call.raw_body.decode(errors="replace")).items()}
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        own_uri = str(call.request.url).split("?", 1)[0]
        try:
            claims = signer.verify_assertion(
                form.get("assertion", ""), [own_uri, *GOOGLE_TOKEN_URIS]
            )
        except InvalidToken:
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        email = str(claims.get("iss", ""))
        if email != default_email():
            return _oauth_error(
                "invalid_grant", "Invalid JWT: the issuer is not the key's account."
            )
        if claims.get("target_audience"):
            id_token = signer.mint_id_token(email, str(claims["target_audience"]), lifetime())
            return JSONResponse({"id_token": id_token})
        if claims.get("scope"):
            return JSONResponse(
                {
                    "access_token": signer.mint_access_token(email, lifetime()),
                    "expires_in": lifetime(),
                    "token_type": "Bearer",
                }
            )
        return _oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")

    # -- metadata server -------------------------------------------------------------------

    def require_flavor(call: Call) -> Response | None:
        if call.request.headers.get("metadata-flavor") == "Google":
            return None
        path = call.request.url.path
        return _metadata(
            f"Your client does not have permission to get URL {path} from this server. "
            "Missing Metadata-Flavor:Google header.",
            403,
        )

    def account_email(call: Call) -> str | None:
        account = call.param("account")
        return default_email() if account in ("default", default_email()) else None

    def ping(call: Call) -> Response:
        return _metadata("computeMetadata/\n")

    def account_info(call: Call) -> Response:
        if (denied := require_flavor(call)) is not None:
            return denied
        email = account_email(call)
        if email is None:
            return _metadata("Not Found", 404)
        if call.query.get("recursive", "").lower() == "true":
            scopes = ["https://www.googleapis.com/auth/cloud-platform"]
            return _metadata({"aliases": ["default"], "email": email, "scopes": scopes})
        return _metadata("aliases\nemail\nidentity\nscopes\ntoken\n")

    def account_item(call: Call) -> Response:
        if (denied := require_flavor(call)) is not None:
            return denied
        email = account_email(call)
        if email is None:
            return _metadata("Not Found", 404)
        item = call.param("item")
        if item == "email":
            return _metadata(email)
        if item == "scopes":
            return _metadata("https://www.googleapis.com/auth/cloud-platform\n")
        if item == "aliases":
            return _metadata("default\n")
        if item == "token":
            return _metadata(
                {
                    "access_token": signer.mint_access_token(email, lifetime()),
                    "expires_in": lifetime(),
                    "token_type": "Bearer",
                }
            )
        if item == "identity":
            audience = call.query.get("audience", "")
            if not audience:
                return _metadata("non-empty audience parameter required", 400)
            return _metadata(signer.mint_id_token(email, audience, lifetime()))
        return _metadata("Not Found", 404)

    def project_item(call: Call) -> Response:
        if (denied := require_flavor(call)) is not None:
            return denied
        item = call.param("item")
        if item == "project-id":
            return _metadata(emulator.config.project)
        if item == "numeric-project-id":
            return _metadata(str(project_number(emulator.config.project)))
        return _metadata("Not Found", 404)

    def universe(call: Call) -> Response:
        if (denied := require_flavor(call)) is not None:
            return denied
        return _metadata("googleapis.com")

    # -- IAM Credentials and certs ---------------------------------------------------------

    def generate_id_token(call: Call) -> dict[str, Any]:
        account = call.param("account")
        found = emulator.iam.find(call.param("project"), account)
        email = found["email"] if found else account if account == default_email() else None
        if email is None:
            raise not_found(f"Not found; Gaia id not found for email {account}")
        audience = str(call.body.get("audience") or "")
        if not audience:
            raise invalid_argument("audience must be set.")
        include_email = bool(call.body.get("includeEmail", False))
        return {"token": signer.mint_id_token(email, audience, lifetime(), include_email)}

    def jwks(call: Call) -> Response:
        return JSONResponse(signer.jwks())

    def pem_certs(call: Call) -> Response:
        return JSONResponse({signer.signing_kid: _self_signed_cert(signer.signing_key)})

    # Google serves these without credentials: the OAuth token endpoint, the metadata server and
    # the certs. IAM Credentials is an ordinary API: it requires an access token.
    accounts = "/computeMetadata/v1/instance/service-accounts/{account}"
    return [
        Route("POST", "/token", token, anonymous=True),
        Route("GET", "/", ping, anonymous=True),
        Route("GET", accounts, account_info, anonymous=True),
        Route("GET", accounts + "/{item}", account_item, anonymous=True),
        Route("GET", "/computeMetadata/v1/project/{item}", project_item, anonymous=True),
        Route("GET", "/computeMetadata/v1/universe/universe-domain", universe, anonymous=True),
        Route(
            "POST",
            "/v1/projects/{project}/serviceAccounts/{account}:generateIdToken",
            generate_id_token,
            "iamcredentials.googleapis.com",
        ),
        Route("GET", "/oauth2/v3/certs", jwks, anonymous=True),
        Route("GET", "/oauth2/v1/certs", pem_certs, anonymous=True),
    ]
