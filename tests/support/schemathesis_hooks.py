"""Schemathesis hooks for the live run: sign Twilio callbacks as Twilio would.

Loaded by ``st run`` through ``SCHEMATHESIS_HOOKS``; the test sets
``CALLWIRE_BASE_URL`` and ``CALLWIRE_TWILIO_TOKEN``. Without a valid
``X-Twilio-Signature`` every generated callback would stop at the 401, and
the webhook's own behaviour would go untested.
"""

from __future__ import annotations

import os
from typing import Any

import requests
import schemathesis

from blueprints.webhooks.twilio_signature import expected_signature


def _form_pairs(body: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the form parameters as the server decodes what requests encodes."""
    pairs = []
    for name, values in body.items():
        for value in values if isinstance(values, list) else [values]:
            if value is not None:
                pairs.append((str(name), str(value)))
    return pairs


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if not case.path.endswith("/webhook/twilio") or not isinstance(case.body, dict):
        return
    if case.headers and "X-Twilio-Signature" not in case.headers:
        return  # a check that leaves the signature out on purpose
    base = os.environ["CALLWIRE_BASE_URL"]
    url = requests.Request("POST", base + case.formatted_path, params=case.query).prepare().url
    signature = expected_signature(os.environ["CALLWIRE_TWILIO_TOKEN"], url,
                                   _form_pairs(case.body))
    case.headers = {**(case.headers or {}), "X-Twilio-Signature": signature}
