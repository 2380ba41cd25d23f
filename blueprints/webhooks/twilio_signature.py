"""Twilio request validation: ``X-Twilio-Signature`` over the public URL and the form.

Twilio signs ``base64(HMAC-SHA1(auth token, URL + name1 + value1 + name2 + ...))``
where the URL is the one Twilio requested (query string included) and the
POST parameters are sorted by name. Behind Heroku's router the app sees its
own address, so the public URL is rebuilt from ``X-Forwarded-Proto`` and
``X-Forwarded-Host`` / ``Host``. Like Twilio's own validators, the URL is also
tried with the scheme's default port added or removed, because some Twilio
paths sign ``https://host:443/...`` and others ``https://host/...``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from webapp.guards import secret_matches

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _first(header: str | None) -> str | None:
    """Return the first hop of a possibly comma-separated forwarded header."""
    if not header:
        return None
    first = header.split(",")[0].strip()
    return first or None


def public_url(environ: Mapping[str, Any]) -> str:
    """Rebuild the URL the client asked for, as Twilio saw it, from a WSGI environ."""
    scheme = (_first(environ.get("HTTP_X_FORWARDED_PROTO"))
              or environ.get("wsgi.url_scheme") or "http").lower()
    host = _first(environ.get("HTTP_X_FORWARDED_HOST")) or environ.get("HTTP_HOST")
    if not host:
        host = f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
    # The raw request target keeps the query string byte for byte as signed;
    # gunicorn and Werkzeug both provide it.
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if target and not target.startswith("/"):
        parts = urlsplit(target)  # absolute-form request target: keep path and query only
        target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    if not target:
        path = quote(f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}" or "/")
        query = environ.get("QUERY_STRING", "")
        target = f"{path}?{query}" if query else path
    return f"{scheme}://{host}{target}"


def url_variants(url: str) -> list[str]:
    """Return ``url`` as given, without its port, and with the scheme's default port."""
    parts = urlsplit(url)
    hostname = parts.netloc
    bare_host = hostname.rsplit(":", 1)[0] if _has_port(hostname) else hostname
    variants = [url, urlunsplit(parts._replace(netloc=bare_host))]
    default = _DEFAULT_PORTS.get(parts.scheme)
    if default is not None and not _has_port(hostname):
        variants.append(urlunsplit(parts._replace(netloc=f"{hostname}:{default}")))
    return list(dict.fromkeys(variants))


def _has_port(host: str) -> bool:
    # "[::1]:443" has a port, "[::1]" does not; "example.com:443" has one.
    tail = host.rsplit("]", 1)[-1]
    return ":" in tail


def expected_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Compute the signature Twilio sends for ``url`` and the POST ``params`` (name, value pairs).

    Names are sorted; a name given several times contributes each distinct
    value in sorted order, as Twilio's reference validator does.
    """
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    payload = url + "".join(
        name + value for name in sorted(values) for value in sorted(values[name])
    )
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_valid(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], presented: str | None
) -> bool:
    """Return True when ``presented`` is the signature of ``url`` or a port variant of it.

    Every variant is compared, each in constant time.
    """
    if not presented:
        return False
    pairs = list(params)
    matches = [
        secret_matches(presented.strip(), expected_signature(auth_token, variant, pairs))
        for variant in url_variants(url)
    ]
    return any(matches)
