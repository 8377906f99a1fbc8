"""The emulator's tokens: ID tokens (RS256 JWTs Google-shaped, verifiable with the certs it
serves) and access tokens (opaque `ya29.` strings, HMAC-signed so they survive restarts), and the
key of the generated service-account key file. No token is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt
from google.auth.exceptions import GoogleAuthError

from emulator.gcp.auth.keys import b64url, new_private_key, numeric_id, public_pem, unb64url
from emulator.gcp.errors import invalid_credentials
from emulator.gcp.files import write_json_atomic

ISSUER = "https://accounts.google.com"
ADMIN_ACCOUNT_ID = "emulator-admin"
KEYS_FILE = "keys.json"
SERVICE_ACCOUNT_FILE = "service-account.json"


class InvalidToken(ValueError):
    """A token with a bad signature, audience, issuer or expiry."""


def admin_email(project: str) -> str:
    """The service account of the generated key file and of the metadata server's `default`."""
    return f"{ADMIN_ACCOUNT_ID}@{project}.iam.gserviceaccount.com"


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
            new_private_key(),
            secrets.token_hex(20),
            secrets.token_bytes(32),
            new_private_key(),
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
        return public_pem(self.signing_key)

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
                    "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                    "e": b64url(numbers.e.to_bytes(3, "big")),
                }
            ]
        }

    # -- access tokens ---------------------------------------------------------------------

    def mint_access_token(self, email: str, lifetime: int = 3600) -> str:
        payload = b64url(json.dumps({"e": email, "x": int(time.time()) + lifetime}).encode())
        mac = hmac.new(self.access_secret, payload.encode(), hashlib.sha256).digest()
        return f"ya29.{payload}.{b64url(mac)}"

    def verify_access_token(self, token: str) -> str:
        """The email an access token was issued to; 401 UNAUTHENTICATED when invalid/expired."""
        parts = token.split(".")
        if len(parts) == 3 and parts[0] == "ya29":
            mac = hmac.new(self.access_secret, parts[1].encode(), hashlib.sha256).digest()
            if hmac.compare_digest(b64url(mac).encode(), parts[2].encode()):
                data = json.loads(unb64url(parts[1]))
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
                certs={self.sa_key_id: public_pem(self.sa_key)},
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
                certs={self.sa_key_id: public_pem(self.sa_key)},
                audience=audiences,
                clock_skew_in_seconds=10,
            )
        except ValueError as exc:
            raise InvalidToken(str(exc)) from None
        return claims
