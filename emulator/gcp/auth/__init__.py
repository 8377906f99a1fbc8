"""Auth: the emulator's tokens and the endpoints that issue and check them.

`keys` (key material), `tokens` (TokenSigner: ID and access tokens, the key file's key),
`identity` (who calls an API: the bearer access token, 401 as Google), `oauth` (the token
endpoint), `user_credentials` (a user's ADC file and its refresh-token grant), `metadata` (the
metadata server), `routes` (their table and the certs).
"""

from emulator.gcp.auth.keys import new_private_key as _new_key
from emulator.gcp.auth.routes import routes
from emulator.gcp.auth.tokens import (
    SERVICE_ACCOUNT_FILE,
    InvalidToken,
    TokenSigner,
    admin_email,
)

__all__ = [
    "SERVICE_ACCOUNT_FILE",
    "InvalidToken",
    "TokenSigner",
    "_new_key",
    "admin_email",
    "routes",
]
