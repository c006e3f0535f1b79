"""Client IP resolution: forged headers ignored, trusted chains walked from the right, one canonical form."""

from __future__ import annotations

import pytest

from guard.clientip import TrustedProxies, normalize, parse_ip, resolve

LB = TrustedProxies(["10.0.0.0/8", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:c000:0201", "192.0.2.1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("192.0.2.1:8080", "192.0.2.1"),
        ('"[2001:db8::1]"', "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
    ],
)
def test_normalize(text: str, canonical: str | None) -> None:
    assert normalize(text) == canonical


@pytest.mark.parametrize(
    ("peer", "xff", "forwarded", "client"),
    [
        ("198.51.100.7", ["6.6.6.6"], [], "198.51.100.7"),                   # untrusted peer: headers ignored
        ("198.51.100.7", [], ["for=6.6.6.6"], "198.51.100.7"),
        ("::ffff:198.51.100.7", ["6.6.6.6"], [], "198.51.100.7"),            # mapped peer, one form
        ("10.0.0.2", ["203.0.113.5"], [], "203.0.113.5"),
        ("10.0.0.2", ["6.6.6.6, 203.0.113.5, 10.9.9.9"], [], "203.0.113.5"),  # right-most untrusted
        ("10.0.0.2", ["6.6.6.6", "203.0.113.5"], [], "203.0.113.5"),          # repeated headers join
        ("10.0.0.2", ["10.1.1.1, 10.2.2.2"], [], "10.1.1.1"),                # all trusted: left-most
        ("10.0.0.2", ["unknown, 10.2.2.2"], [], "10.2.2.2"),                 # cannot see past "unknown"
        ("10.0.0.2", [], ['for=203.0.113.5;proto=https, for="[2001:db8:ffff::9]"'], "203.0.113.5"),
        ("10.0.0.2", ["6.6.6.6"], ["for=203.0.113.5"], "203.0.113.5"),        # Forwarded wins over XFF
        ("10.0.0.2", ["::ffff:203.0.113.5"], [], "203.0.113.5"),
        ("2001:db8:ffff::1", ["2001:DB8::7"], [], "2001:db8::7"),
        ("10.0.0.2", [], [], "10.0.0.2"),
        ("10.0.0.2", ["x" * 5000], [], "10.0.0.2"),                          # oversized header ignored
    ],
)
def test_resolve(peer: str, xff: list[str], forwarded: list[str], client: str) -> None:
    assert resolve(peer, LB, xff, forwarded)[0] == client


def test_nothing_trusted_means_the_peer() -> None:
    assert resolve("10.0.0.2", TrustedProxies([]), ["203.0.113.5"]) == ("10.0.0.2", False)


def test_mapped_cidr_in_config_matches_ipv4() -> None:
    trusted = TrustedProxies(["::ffff:10.0.0.0/104"])
    ip = parse_ip("10.1.2.3")
    assert ip is not None and ip in trusted
