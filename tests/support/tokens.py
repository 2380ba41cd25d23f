"""Firebase ID tokens made by hand for tests (independent of webapp.auth)."""

from __future__ import annotations

import base64
import json
import time

TEST_PROJECT = "demo-callwire"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def emulator_token(
    email: str | None,
    *,
    project: str = TEST_PROJECT,
    ttl: float = 3600,
    uid: str | None = None,
    **claims: object,
) -> str:
    """Return an unsigned (alg none) token as the Firebase Auth emulator issues them.

    The email is verified unless ``email_verified=False`` is passed.
    """
    now = int(time.time())
    body = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "auth_time": now,
        "sub": uid or f"uid-{(email or 'anon').split('@')[0]}",
        "iat": now,
        "exp": int(now + ttl),
        **claims,
    }
    if email is not None:
        body["email"] = email
        body.setdefault("email_verified", True)
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(body)}."
