"""Firebase ID token verification, shared by REST views and WebSocket sessions.

firebase-admin checks signature, audience, issuer, ``iat`` and expiry in
production; in emulator mode (``FIREBASE_AUTH_EMULATOR_HOST``) it skips
signature, ``iat`` and expiry, so :meth:`TokenVerifier.verify` checks ``exp``
and ``iat`` itself in every mode. The email is the identity, so a token whose
``email_verified`` is not true is refused unless ALLOW_UNVERIFIED_EMAILS says
otherwise. Error messages never repeat the token.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass

import firebase_admin
import google.auth.credentials
from firebase_admin import auth as firebase_auth

from webapp import metrics
from webapp.config import normalise_email

logger = logging.getLogger(__name__)

#: Longest ``exp`` accepted, in seconds from now (Firebase ID tokens last one hour).
MAX_TOKEN_LIFETIME = 7 * 86400


class AuthError(Exception):
    """A token was missing, malformed, forged, for another project, or expired."""


class VerifierUnavailable(Exception):
    """Google's public keys could not be fetched: the token was not judged; retry later."""


class TokenExpired(AuthError):
    """The token was valid but its ``exp`` has passed."""


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for, and until when."""

    email: str
    uid: str
    expires_at: float


class TokenVerifier:
    """Verify Firebase ID tokens for one project."""

    _init_lock = threading.Lock()

    def __init__(self, project_id: str, *, allow_unverified_emails: bool = False) -> None:
        self.project_id = project_id
        self.allow_unverified_emails = allow_unverified_emails
        with self._init_lock:
            self._app = firebase_admin.initialize_app(
                google.auth.credentials.AnonymousCredentials(),
                {"projectId": project_id},
                name=f"callwire-{uuid.uuid4().hex}",
            )

    def verify(self, token: object) -> Identity:
        """Return the identity of a valid, unexpired token with an email claim."""
        try:
            identity = self._verify(token)
        except TokenExpired:
            metrics.TOKEN_VERIFICATIONS.labels("expired").inc()
            raise
        except AuthError:
            metrics.TOKEN_VERIFICATIONS.labels("rejected").inc()
            raise
        except VerifierUnavailable:
            metrics.TOKEN_VERIFICATIONS.labels("unavailable").inc()
            raise
        metrics.TOKEN_VERIFICATIONS.labels("valid").inc()
        return identity

    def _verify(self, token: object) -> Identity:
        if not isinstance(token, str) or not token.strip():
            raise AuthError("Authentication failed: missing token")
        try:
            claims = firebase_auth.verify_id_token(token.strip(), app=self._app)
        except firebase_auth.ExpiredIdTokenError:
            raise TokenExpired("Authentication failed: token expired") from None
        except firebase_auth.CertificateFetchError as error:
            # Not the client's fault: a 401 would make it throw away a good token.
            logger.warning("token not verified: Google certificates unreachable (%s)", error)
            raise VerifierUnavailable(
                "Token verification unavailable: retry shortly"
            ) from None
        except (ValueError, firebase_admin.exceptions.FirebaseError) as error:
            logger.info("token rejected: %s", type(error).__name__)
            raise AuthError("Authentication failed: invalid token") from None
        expires_at = claims.get("exp")
        if not isinstance(expires_at, (int, float)) or isinstance(expires_at, bool):
            raise AuthError("Authentication failed: token has no expiry")
        if not math.isfinite(expires_at) or expires_at > time.time() + MAX_TOKEN_LIFETIME:
            # Firebase ID tokens live an hour; an unsigned emulator token could claim
            # any number, and one that cannot be a date would break every answer.
            raise AuthError("Authentication failed: token expiry is out of range")
        if expires_at <= time.time():
            raise TokenExpired("Authentication failed: token expired")
        issued_at = claims.get("iat")
        if not isinstance(issued_at, (int, float)) or isinstance(issued_at, bool):
            raise AuthError("Authentication failed: token has no issue time")
        if not issued_at <= time.time():
            # google-auth refuses this in production ("used too early"); the
            # emulator path skips it, so development must refuse it here.
            raise AuthError("Authentication failed: token issued in the future")
        email = claims.get("email")
        if not isinstance(email, str) or not email.strip():
            raise AuthError("Authentication failed: token has no email claim")
        if claims.get("email_verified") is not True and not self.allow_unverified_emails:
            # Anyone can create an account with someone else's address; until
            # it is verified, the email proves nothing and it is our identity.
            raise AuthError("Authentication failed: email address not verified")
        return Identity(normalise_email(email), str(claims.get("sub", "")), float(expires_at))

    def close(self) -> None:
        """Release the firebase-admin app this verifier created."""
        firebase_admin.delete_app(self._app)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_emulator_token(email: str, project_id: str, ttl_seconds: int = 3600) -> str:
    """Return an unsigned Firebase Auth emulator ID token for ``email`` (development only)."""
    now = int(time.time())
    uid = "dev-" + uuid.uuid5(uuid.NAMESPACE_URL, normalise_email(email)).hex[:20]
    claims = {
        "iss": f"https://securetoken.google.com/{project_id}",
        "aud": project_id,
        "auth_time": now,
        "user_id": uid,
        "sub": uid,
        "iat": now,
        "exp": now + ttl_seconds,
        "email": email,
        "email_verified": True,
        "firebase": {"identities": {"email": [email]}, "sign_in_provider": "password"},
    }
    header = {"alg": "none", "typ": "JWT"}
    return f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}."
