"""Admission caps and the client address (webapp.admission), without a server."""

from __future__ import annotations

import pytest

from webapp.admission import Admission, Refused, client_address


def test_the_worker_cap_refuses_with_503_until_a_place_is_given_back():
    admission = Admission(max_connections=3, max_pending_per_address=10)
    tickets = [admission.admit(f"10.0.0.{n}") for n in range(3)]
    with pytest.raises(Refused) as refusal:
        admission.admit("10.0.0.9")
    assert refusal.value.status == 503
    assert "limit 3" in refusal.value.message
    tickets[0].initialised()
    with pytest.raises(Refused):
        admission.admit("10.0.0.9")  # initialised sockets still count per worker
    tickets[1].release()
    tickets[1].release()  # idempotent
    assert admission.open == 2
    admission.admit("10.0.0.9")


def test_the_address_cap_counts_only_sockets_not_yet_initialised():
    admission = Admission(max_connections=100, max_pending_per_address=2)
    first, second = admission.admit("a"), admission.admit("a")
    with pytest.raises(Refused) as refusal:
        admission.admit("a")
    assert refusal.value.status == 429
    assert refusal.value.retry_after > 0
    admission.admit("b")  # another address is not limited by this one
    first.initialised()
    first.initialised()
    assert admission.pending("a") == 1
    third = admission.admit("a")
    second.release()
    third.release()
    first.release()
    assert admission.pending("a") == 0
    assert admission.open == 1


@pytest.mark.parametrize(
    ("forwarded", "hops", "expected"),
    [
        (None, 0, "10.1.1.1"),
        ("203.0.113.9", 0, "10.1.1.1"),  # not behind a trusted proxy: the header is ignored
        ("203.0.113.9", 1, "203.0.113.9"),
        ("6.6.6.6, 203.0.113.9", 1, "203.0.113.9"),  # what the client wrote is not trusted
        ("6.6.6.6,203.0.113.9, 198.51.100.1", 2, "203.0.113.9"),
        ("203.0.113.9", 2, "203.0.113.9"),
        (" , ", 1, "10.1.1.1"),
        (None, 1, "10.1.1.1"),
    ],
)
def test_client_address_trusts_only_what_trusted_proxies_appended(forwarded, hops, expected):
    environ = {"REMOTE_ADDR": "10.1.1.1"}
    if forwarded is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded
    assert client_address(environ, hops) == expected
