"""The PROXY protocol parser, without sockets: a table of headers and what they mean."""

from __future__ import annotations

from dataclasses import replace

import pytest

from guard.proxyproto import (
    MAX_HEADER,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    build_v1,
    build_v2,
    header_length,
    parse,
)

TAIL = b"GET / HTTP/1.1\r\n"  # what follows a header and must never be counted in it


# ``length`` is filled in from the data by the test
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
         ProxyHeader(1, False, ("192.0.2.1", 56324), ("198.51.100.2", 443), 0)),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
         ProxyHeader(1, False, ("2001:db8::1", 1), ("2001:db8::2", 65535), 0)),
        (b"PROXY UNKNOWN\r\n", ProxyHeader(1, False, None, None, 0)),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1, False, None, None, 0)),
        (build_v2(("192.0.2.1", 56324), ("198.51.100.2", 443)),
         ProxyHeader(2, False, ("192.0.2.1", 56324), ("198.51.100.2", 443), 0)),
        (build_v2(("2001:db8::1", 7), ("2001:db8::2", 8)),
         ProxyHeader(2, False, ("2001:db8::1", 7), ("2001:db8::2", 8), 0)),
        (build_v2(None), ProxyHeader(2, True, None, None, 0)),
        (build_v2(None, tlvs=b"\x01\x00\x02h2"), ProxyHeader(2, True, None, None, 0)),
        (build_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=b"\x02\x00\x04host"),
         ProxyHeader(2, False, ("192.0.2.1", 1), ("192.0.2.2", 2), 0)),
        # UNSPEC family and a UNIX address: nothing usable, use the socket peer
        (V2_SIGNATURE + b"\x21\x00\x00\x00", ProxyHeader(2, False, None, None, 0)),
        (V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"\x00" * 216, ProxyHeader(2, False, None, None, 0)),
    ],
)
def test_valid_headers(data: bytes, expected: ProxyHeader) -> None:
    assert header_length(data + TAIL) == len(data)
    assert parse(data) == replace(expected, length=len(data))


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",      # missing a port
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 x\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",        # family mismatch
        b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.999 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",         # leading zero
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 65536\r\n",
        b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",         # double space
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,    # version 1 in a v2 header
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,    # command 2
        V2_SIGNATURE + b"\x21\x41\x00\x0c" + b"\x00" * 12,    # family 4
        V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,     # INET needs 12 bytes
        V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\x00" * 12,    # INET6 needs 36
    ],
)
def test_invalid_headers(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


@pytest.mark.parametrize("data", [b"", b"P", b"PROXY", b"PROXY TCP4 1.2.3.4", V2_SIGNATURE[:5],
                                  V2_SIGNATURE, V2_SIGNATURE + b"\x21\x11\x00"])
def test_incomplete_prefix_needs_more(data: bytes) -> None:
    assert header_length(data) is None


def test_v2_length_is_known_from_the_fixed_part() -> None:
    header = build_v2(("192.0.2.1", 1), ("192.0.2.2", 2))
    assert header_length(header[:16]) == len(header)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",                       # a TLS ClientHello
        b"PROXY TCP4 " + b"1" * V1_MAX,                # no CRLF within 107 bytes
        b"PROXY TCP4 1.2.3.4\n",                       # bare LF
        b"PROXY TCP4 1.2.3.4\rX",                      # bare CR
        V2_SIGNATURE + b"\x21\x11\xff\xff",             # longer than 536 bytes
    ],
)
def test_garbage_is_rejected_early(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        header_length(data)


def test_limits() -> None:
    assert MAX_HEADER == 536 and V1_MAX == 107
    longest_v1 = build_v1(("ffff:f:f:f:f:f:f:ffff", 65535), ("ffff:f:f:f:f:f:f:ffff", 65535))
    assert len(longest_v1) <= V1_MAX


def test_builders_round_trip() -> None:
    h = build_v1(("192.0.2.1", 1000), ("192.0.2.2", 80))
    assert parse(h).source == ("192.0.2.1", 1000)
    assert parse(build_v2(("::ffff:192.0.2.1", 5))).source == ("::ffff:c000:201", 5)
