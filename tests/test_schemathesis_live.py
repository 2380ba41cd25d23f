"""Schemathesis against the live server's own /openapi.json: the document is what the server does.

Runs ``st run --checks all`` (every check: status codes, response schemas,
content types, headers, 405s with ``Allow``, schema-valid requests accepted,
schema-violating ones refused, no 5xx) on every operation, with a bounded
example count and a fixed seed so CI is repeatable. Explore more with
``CALLWIRE_SCHEMATHESIS_EXAMPLES=200 CALLWIRE_SCHEMATHESIS_SEED=<n> pytest
tests/test_schemathesis_live.py``. Twilio callbacks are signed by the hook
in ``tests/support/schemathesis_hooks.py``, so the webhook itself is tested.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ARTIFACTS, ROOT, LiveServer, start_server
from tests.support.tokens import emulator_token

TWILIO_TOKEN = "schemathesis-twilio-token"
VAPI_SECRET = "schemathesis-vapi-secret"
EXAMPLES = int(os.environ.get("CALLWIRE_SCHEMATHESIS_EXAMPLES", "10"))
SEED = int(os.environ.get("CALLWIRE_SCHEMATHESIS_SEED", "20261201"))


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server = start_server({"VAPI_WEBHOOK_SECRET": VAPI_SECRET, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN},
                          name="schemathesis")
    yield server
    server.stop()


def test_the_openapi_document_describes_exactly_what_the_server_does(live):
    st = Path(sys.executable).parent / "st"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
        "CALLWIRE_BASE_URL": live.http,
        "CALLWIRE_TWILIO_TOKEN": TWILIO_TOKEN,
        "NO_COLOR": "1",
    }
    command = [
        str(st), "run", f"{live.http}/openapi.json",
        "--checks", "all",
        "--max-examples", str(EXAMPLES),
        "--seed", str(SEED),
        "--generation-database", "none",
        "--request-timeout", "10",
        "-H", f"Authorization: Bearer {emulator_token('schemathesis@example.com', ttl=3600)}",
        "-H", f"X-API-Key: {live.api_key}",
        "-H", f"X-Vapi-Secret: {VAPI_SECRET}",
    ]
    ARTIFACTS.mkdir(exist_ok=True)
    result = subprocess.run(command, cwd=ARTIFACTS, env=env, capture_output=True, text=True,
                            timeout=240, check=False)
    output = result.stdout + result.stderr
    (ARTIFACTS / "schemathesis.txt").write_text(output)
    assert result.returncode == 0, output[-12000:]
    # Every operation of the document was tested (6 API ones, plus /dev in development).
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-3000:]
    assert int(tested.group(1)) == int(selected.group(1)) == int(selected.group(2)) >= 6
    assert " passed" in output, output[-3000:]
    assert "Traceback" not in live.log()
