"""Firebase ID token verification: emulator tokens, and the real RS256 path offline.

The RS256 tests run without FIREBASE_AUTH_EMULATOR_HOST, so firebase-admin
checks signatures as in production; the certificate it would fetch from
Google is our own self-signed one (docs/stack-notes.md).
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Iterator

import google.auth.exceptions
import google.oauth2.id_token
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.tokens import TEST_PROJECT, emulator_token
from webapp.auth import (
    AuthError,
    Identity,
    TokenExpired,
    TokenVerifier,
    VerifierUnavailable,
    mint_emulator_token,
)

PROJECT = "callwire-test"
ISSUER = f"https://securetoken.google.com/{PROJECT}"
KID = "test-key-1"


# -- emulator mode (development and most tests) ---------------------------------------


@pytest.fixture
def emulator_verifier(monkeypatch) -> Iterator[TokenVerifier]:
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099")
    verifier = TokenVerifier(TEST_PROJECT)
    yield verifier
    verifier.close()


def test_emulator_token_is_accepted(emulator_verifier):
    token = emulator_token(" Alice@Example.COM ", uid="uid-alice")
    identity = emulator_verifier.verify(token)
    assert identity.email == "alice@example.com"
    assert identity.uid == "uid-alice"
    assert identity.expires_at == pytest.approx(time.time() + 3600, abs=5)


def test_minted_development_token_is_accepted(emulator_verifier):
    identity = emulator_verifier.verify(mint_emulator_token("dev@example.com", TEST_PROJECT))
    assert identity.email == "dev@example.com"


def test_expired_emulator_token_is_refused_by_us(emulator_verifier):
    # firebase-admin does not check exp in emulator mode: the verifier must.
    with pytest.raises(TokenExpired):
        emulator_verifier.verify(emulator_token("alice@example.com", ttl=-1))
    with pytest.raises(TokenExpired):
        emulator_verifier.verify(emulator_token("alice@example.com", ttl=0))


def test_token_without_email_is_refused(emulator_verifier):
    with pytest.raises(AuthError, match="email") as refusal:
        emulator_verifier.verify(emulator_token(None))
    assert not isinstance(refusal.value, TokenExpired)
    with pytest.raises(AuthError, match="email"):
        emulator_verifier.verify(emulator_token("   "))


@pytest.mark.parametrize(
    "claims",
    [
        {"project": "another-project"},
        {"aud": "another-project"},
        {"iss": "https://securetoken.google.com/another-project"},
        {"iss": "https://evil.example.com/demo-callwire"},
        {"exp": "tomorrow"},
        {"exp": True},
        {"exp": 10**12},
    ],
)
def test_wrong_project_audience_issuer_or_expiry_is_refused(emulator_verifier, claims):
    with pytest.raises(AuthError) as refusal:
        emulator_verifier.verify(emulator_token("alice@example.com", **claims))
    assert not isinstance(refusal.value, TokenExpired)


@pytest.mark.parametrize(
    "token", [None, "", "   ", 42, {"token": "x"}, "garbage", "a.b.c", "a.b", "é.é.é", "x" * 20000]
)
def test_missing_or_garbage_tokens_are_refused(emulator_verifier, token):
    with pytest.raises(AuthError) as refusal:
        emulator_verifier.verify(token)
    assert str(refusal.value).startswith("Authentication failed")


@pytest.mark.parametrize(
    "claims", [{"email_verified": False}, {"email_verified": None}, {"email_verified": "true"}]
)
def test_unverified_emulator_email_is_refused_by_default(monkeypatch, emulator_verifier, claims):
    token = emulator_token("alice@example.com", **claims)
    with pytest.raises(AuthError, match="not verified"):
        emulator_verifier.verify(token)
    allowing = TokenVerifier(TEST_PROJECT, allow_unverified_emails=True)
    try:
        assert allowing.verify(token).email == "alice@example.com"
    finally:
        allowing.close()


def test_emulator_token_without_email_verified_is_unverified(emulator_verifier):
    header, body, _ = emulator_token("alice@example.com").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    del claims["email_verified"]
    unsigned = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError, match="not verified"):
        emulator_verifier.verify(f"{header}.{unsigned}.")


@pytest.mark.parametrize("iat", [60, 3600])
def test_emulator_token_issued_in_the_future_is_refused_as_in_production(
    emulator_verifier, iat
):
    # firebase-admin skips iat in emulator mode; production refuses "used too early".
    with pytest.raises(AuthError, match="future") as refusal:
        emulator_verifier.verify(emulator_token("alice@example.com", iat=int(time.time()) + iat))
    assert not isinstance(refusal.value, TokenExpired)


@pytest.mark.parametrize("iat", ["now", None, True, float("nan")])
def test_emulator_token_without_a_usable_iat_is_refused(emulator_verifier, iat):
    with pytest.raises(AuthError):
        emulator_verifier.verify(emulator_token("alice@example.com", iat=iat))


def test_errors_never_repeat_the_token(emulator_verifier):
    token = emulator_token("alice@example.com", ttl=-10)
    with pytest.raises(AuthError) as refusal:
        emulator_verifier.verify(token)
    assert token not in str(refusal.value)
    assert token.split(".")[1] not in str(refusal.value)


# -- production mode: RS256 signatures, checked offline ----------------------------------


def make_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed_pem(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return make_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return make_key()


@pytest.fixture
def fetched_urls() -> list[str]:
    return []


@pytest.fixture
def production_verifier(monkeypatch, signing_key, fetched_urls) -> Iterator[TokenVerifier]:
    """A verifier in production mode whose Google certificates are our own."""
    monkeypatch.delenv("FIREBASE_AUTH_EMULATOR_HOST", raising=False)
    certs = {KID: self_signed_pem(signing_key)}

    def fetch_certs(request, certs_url):
        fetched_urls.append(certs_url)
        return certs

    monkeypatch.setattr(google.oauth2.id_token, "_fetch_certs", fetch_certs)
    verifier = TokenVerifier(PROJECT)
    yield verifier
    verifier.close()


def signed_token(
    key: rsa.RSAPrivateKey,
    *,
    email: str | None = "alice@example.com",
    kid: str | None = KID,
    ttl: float = 3600,
    algorithm: str = "RS256",
    **overrides: object,
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": PROJECT,
        "auth_time": now - 10,
        "sub": "uid-alice",
        "user_id": "uid-alice",
        "iat": now - 10,
        "exp": int(now + ttl),
        "firebase": {"sign_in_provider": "password"},
    }
    if email is not None:
        claims["email"] = email
        claims["email_verified"] = True
    claims.update(overrides)
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def test_signed_token_is_accepted(production_verifier, signing_key, fetched_urls):
    identity = production_verifier.verify(signed_token(signing_key, email="Alice@Example.com"))
    assert identity == Identity("alice@example.com", "uid-alice", identity.expires_at)
    assert identity.expires_at == pytest.approx(time.time() + 3600, abs=5)
    # The certificates came from Google's securetoken endpoint (here: our fake).
    assert fetched_urls and "securetoken" in fetched_urls[0]


def test_expired_signed_token_is_token_expired(production_verifier, signing_key):
    with pytest.raises(TokenExpired):
        production_verifier.verify(signed_token(signing_key, ttl=-5, iat=int(time.time()) - 3700))


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("signed with another key", lambda key, other: signed_token(other)),
        ("unknown kid", lambda key, other: signed_token(key, kid="unknown-kid")),
        ("no kid", lambda key, other: signed_token(key, kid=None)),
        ("wrong audience", lambda key, other: signed_token(key, aud="another-project")),
        ("wrong issuer", lambda key, other: signed_token(
            key, iss="https://securetoken.google.com/another-project")),
        ("foreign issuer", lambda key, other: signed_token(key, iss="https://accounts.google.com")),
        ("issued in the future", lambda key, other: signed_token(key, iat=int(time.time()) + 600)),
        ("no subject", lambda key, other: signed_token(key, sub="")),
        ("HS256", lambda key, other: jwt.encode(
            {"iss": ISSUER, "aud": PROJECT, "sub": "u", "exp": int(time.time()) + 60,
             "email": "alice@example.com"}, "k" * 32, algorithm="HS256", headers={"kid": KID})),
        ("unsigned emulator token", lambda key, other: emulator_token(
            "alice@example.com", project=PROJECT)),
        ("tampered payload", lambda key, other: tamper(signed_token(key))),
        ("no email", lambda key, other: signed_token(key, email=None)),
    ],
)
def test_forged_or_foreign_signed_tokens_are_refused(
    production_verifier, signing_key, other_key, case, make
):
    with pytest.raises(AuthError) as refusal:
        production_verifier.verify(make(signing_key, other_key))
    assert not isinstance(refusal.value, TokenExpired), case


@pytest.mark.parametrize("verified", [False, None])
def test_signed_token_with_unverified_email_is_refused_unless_allowed(
    production_verifier, signing_key, verified
):
    if verified is None:
        token = signed_token_without_email_verified(signing_key)
    else:
        token = signed_token(signing_key, email_verified=verified)
    with pytest.raises(AuthError, match="not verified"):
        production_verifier.verify(token)
    allowing = TokenVerifier(PROJECT, allow_unverified_emails=True)
    try:
        assert allowing.verify(token).email == "alice@example.com"
    finally:
        allowing.close()


def signed_token_without_email_verified(key: rsa.RSAPrivateKey) -> str:
    claims = jwt.decode(signed_token(key), options={"verify_signature": False})
    del claims["email_verified"]
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


def tamper(token: str) -> str:
    """Swap the payload for another user's while keeping alice's signature."""
    header, _, signature = token.split(".")
    forged = jwt.encode(
        {"iss": ISSUER, "aud": PROJECT, "sub": "uid-mallory", "iat": int(time.time()) - 10,
         "exp": int(time.time()) + 3600, "email": "mallory@example.com"},
        "unused-secret-key-of-32-bytes-long", algorithm="HS256",
    ).split(".")[1]
    return f"{header}.{forged}.{signature}"


def test_unreachable_google_certificates_are_an_outage_not_a_bad_token(
    monkeypatch, signing_key
):
    """A good token must not be answered 'invalid' because Google could not be reached."""
    monkeypatch.delenv("FIREBASE_AUTH_EMULATOR_HOST", raising=False)

    def unreachable(request, certs_url):
        raise google.auth.exceptions.TransportError("connection refused")

    monkeypatch.setattr(google.oauth2.id_token, "_fetch_certs", unreachable)
    verifier = TokenVerifier(PROJECT)
    try:
        with pytest.raises(VerifierUnavailable) as outage:
            verifier.verify(signed_token(signing_key))
        assert not isinstance(outage.value, AuthError)
    finally:
        verifier.close()
