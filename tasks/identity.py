"""Who the caller is and which ID tokens it mints: one answer per set of resolved credentials.

Control-plane calls, ID tokens for the private service and the default ``roles/run.invoker`` member
all come from the credentials ``tasks.clients.resolve_cloud`` resolved; nothing here looks
credentials up again (``id_token.fetch_id_token_credentials`` would read the environment, which for
a ``GcpCredentials`` block is another identity).

================================================  ==============================================
credentials (google-auth 2.63 class)              ID token → member
================================================  ==============================================
``service_account.Credentials`` (key file,        ``service_account.IDTokenCredentials``: the
a ``GcpCredentials`` block)                       jwt-bearer grant with ``target_audience`` at
                                                  the key's ``token_uri`` → ``serviceAccount:``
``compute_engine.Credentials`` (metadata server:  ``compute_engine.IDTokenCredentials`` on the
Cloud Run work pool, GCE, GKE)                    metadata identity endpoint → ``serviceAccount:``
                                                  its email, read *after* a refresh: it is
                                                  ``"default"`` until then
``oauth2.credentials.Credentials``                the ``id_token`` Google's token endpoint returns
(``gcloud auth application-default login``)       with a refreshed access token
                                                  (``Credentials.refresh`` keeps it as
                                                  ``.id_token``); its ``aud`` is the OAuth client
                                                  id, which Cloud Run accepts, as
                                                  ``gcloud run services proxy`` relies on →
                                                  ``user:`` the token's ``email``
``impersonated_credentials.Credentials``          IAM Credentials ``generateIdToken`` for the
(``impersonated_service_account`` ADC file,       target, authorized by the source credentials →
``CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT``)    ``serviceAccount:`` the target
================================================  ==============================================

Other credential types (workload identity federation, ...) get a clear error.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import google.auth.transport.requests
from google.auth import compute_engine, impersonated_credentials, jwt
from google.auth.credentials import Credentials
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from tasks.errors import ConfigurationError, IdTokenError

IAM_CREDENTIALS_ENDPOINT = "https://iamcredentials.googleapis.com"


class IdTokenSource(Protocol):
    """Mints a Google ID token for an audience; returns it with its expiry (naive UTC)."""

    def fetch(self, audience: str) -> tuple[str, dt.datetime]: ...


@dataclass(frozen=True)
class Identity:
    """The caller as IAM knows it (``serviceAccount:...`` or ``user:...``) and its ID tokens."""

    member: str
    id_tokens: IdTokenSource

    def __repr__(self) -> str:
        return f"Identity(member={self.member!r})"


def _expiry(token: str) -> dt.datetime:
    """The ``exp`` of a token we just received from Google over TLS (no need to verify it)."""
    exp = jwt.decode(token, verify=False)["exp"]
    return dt.datetime.fromtimestamp(int(exp), dt.UTC).replace(tzinfo=None)


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, verify=False)
    return claims


class _GoogleAuthIdTokens:
    """One google-auth ID-token credentials object per audience, refreshed on every fetch."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._request = google.auth.transport.requests.Request()
        self._by_audience: dict[str, Any] = {}
        self._lock = threading.Lock()

    def fetch(self, audience: str) -> tuple[str, dt.datetime]:
        with self._lock:
            creds = self._by_audience.get(audience)
            if creds is None:
                creds = self._by_audience[audience] = self._make(self._request, audience)
        creds.refresh(self._request)
        token = str(creds.token)
        return token, creds.expiry or _expiry(token)


class _UserIdTokens:
    """The ``id_token`` that comes with each refresh of user credentials.

    The refresh sends no ``scope``: the grant then covers the scopes of the login, which for
    ``gcloud auth application-default login`` include ``openid`` (the ID token is an OpenID Connect
    artefact, OIDC Core §12.2); narrowing the scope to cloud-platform could drop it.
    """

    def __init__(self, creds: user_credentials.Credentials) -> None:
        self._creds = user_credentials.Credentials(
            token=None,
            refresh_token=creds.refresh_token,
            token_uri=creds.token_uri,
            client_id=creds.client_id,
            client_secret=creds.client_secret,
            quota_project_id=creds.quota_project_id,
        )
        self._request = google.auth.transport.requests.Request()
        self._lock = threading.Lock()

    def fetch(self, audience: str) -> tuple[str, dt.datetime]:
        del audience  # a user's ID token is for the OAuth client; Cloud Run accepts that
        with self._lock:
            self._creds.refresh(self._request)
            token = self._creds.id_token
        if not token:
            raise IdTokenError(
                "Google's token endpoint returned no ID token with the refreshed user credentials: "
                "log in again with `gcloud auth application-default login` (its default scopes "
                "include openid)"
            )
        return str(token), _expiry(str(token))

    def email(self) -> str:
        token, _ = self.fetch("")
        claims = _claims(token)
        email = claims.get("email")
        if not email or not claims.get("email_verified", False):
            raise ConfigurationError(
                "The user credentials' ID token names no verified email: pass "
                "invoker='user:you@example.com'"
            )
        return str(email)


class _ImpersonatedIdTokens:
    """IAM Credentials ``generateIdToken`` for the target service account.

    The request google-auth's ``impersonated_credentials.IDTokenCredentials.refresh`` sends (same
    path, body and source-credential authorization), written here because that class hard-codes
    ``iamcredentials.googleapis.com``; the base URL is the only difference against the emulator.
    """

    def __init__(self, creds: impersonated_credentials.Credentials, endpoint: str) -> None:
        self._creds = creds
        self._endpoint = endpoint.rstrip("/")

    def fetch(self, audience: str) -> tuple[str, dt.datetime]:
        from google.auth.transport.requests import AuthorizedSession

        target = self._creds.signer_email
        url = f"{self._endpoint}/v1/projects/-/serviceAccounts/{target}:generateIdToken"
        body = {
            "audience": audience,
            "delegates": self._creds._delegates,  # as IDTokenCredentials reads it
            "includeEmail": True,  # the ingress needs the email to find the invoker binding
        }
        with AuthorizedSession(self._creds._source_credentials) as session:
            response = session.post(url, data=json.dumps(body), headers=_JSON)
        if response.status_code != 200:
            raise IdTokenError(
                f"IAM Credentials generateIdToken for {target} answered "
                f"{response.status_code}: {_error_message(response)}"
            )
        token = str(response.json()["token"])
        return token, _expiry(token)


_JSON = {"Content-Type": "application/json"}


def _error_message(response: Any) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(response.text)[:200]


def identify(
    credentials: Credentials, *, iam_credentials_endpoint: str = IAM_CREDENTIALS_ENDPOINT
) -> Identity:
    """The member and ID-token source of ``credentials`` (refreshing them when the email needs it).

    Raises ``IdTokenError`` when the credentials cannot be refreshed, ``ConfigurationError`` for a
    credential type that names no one.
    """
    try:
        return _identify(credentials, iam_credentials_endpoint)
    except (ConfigurationError, IdTokenError):
        raise
    except Exception as exc:  # google-auth's RefreshError/TransportError: say which, never a token
        raise IdTokenError(
            f"Could not refresh the {type(credentials).__name__} credentials to learn the caller's "
            f"identity: {type(exc).__name__}: {exc}"
        ) from exc


def _identify(credentials: Credentials, iam_credentials_endpoint: str) -> Identity:
    if isinstance(credentials, service_account.Credentials):
        sa = credentials

        def make_sa(request: Any, audience: str) -> Any:
            return service_account.IDTokenCredentials(
                sa.signer,
                sa.service_account_email,
                sa._token_uri,  # the key file's token_uri: no public accessor
                audience,
                universe_domain=sa.universe_domain,
            )

        return Identity(f"serviceAccount:{sa.service_account_email}", _GoogleAuthIdTokens(make_sa))
    if isinstance(credentials, compute_engine.Credentials):
        gce = credentials
        request = google.auth.transport.requests.Request()
        if not gce.valid or "@" not in str(gce.service_account_email):
            gce.refresh(request)  # the metadata server's account is "default" until then

        def make_gce(request: Any, audience: str) -> Any:
            return compute_engine.IDTokenCredentials(
                request, audience, use_metadata_identity_endpoint=True
            )

        return Identity(
            f"serviceAccount:{_email_or_fail(gce.service_account_email)}",
            _GoogleAuthIdTokens(make_gce),
        )
    if isinstance(credentials, user_credentials.Credentials):
        tokens = _UserIdTokens(credentials)
        return Identity(f"user:{tokens.email()}", tokens)
    if isinstance(credentials, impersonated_credentials.Credentials):
        target = _email_or_fail(credentials.signer_email)
        return Identity(
            f"serviceAccount:{target}",
            _ImpersonatedIdTokens(credentials, iam_credentials_endpoint),
        )
    raise ConfigurationError(
        f"{type(credentials).__name__} credentials are not supported for ID tokens: use a "
        "service-account key, the metadata server, `gcloud auth application-default login`, "
        "service-account impersonation or a GcpCredentials block"
    )


def _email_or_fail(email: object) -> str:
    if not email or "@" not in str(email):
        raise ConfigurationError(
            f"Cannot tell the caller's identity from these credentials (email {email!r}): pass "
            "invoker='user:you@example.com' (never allUsers)"
        )
    return str(email)
