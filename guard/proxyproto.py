"""PROXY protocol v1 and v2 headers: recognised and parsed from bytes, no I/O.

A load balancer in front of the guard that terminates TCP (AWS NLB, HAProxy,
Envoy) hides the client's address unless it prepends a PROXY header to the
connection.  The listener reads exactly the header's bytes (``header_length``
tells it how many) and hands them to ``parse``; whatever follows belongs to
HTTP or TLS and must not be consumed here.

Reference: the HAProxy "PROXY protocol" specification, versions 1 and 2
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt).  Section numbers
in comments refer to it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

V1_PREFIX = b"PROXY "
V1_MAX = 107  # section 2.1: the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature (12) + version/command + family/transport + length (2)
MAX_HEADER = 536  # section 2.2: receivers need at most 536 bytes without large TLVs

_V2_ADDR_LEN = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX (section 2.2)


class ProxyProtocolError(ValueError):
    """The connection did not start with a valid PROXY header: the listener closes it."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the sender told us.  ``source`` is None when the socket peer must be used.

    That is the case for v2 LOCAL (health checks from the balancer itself),
    v1 ``UNKNOWN`` and v2 UNSPEC/UNIX families: sections 2.1 and 2.2 say the
    receiver then uses the real connection endpoints.
    """

    version: Literal[1, 2]
    local: bool
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int


def header_length(data: bytes) -> int | None:
    """Length of the PROXY header that ``data`` starts with.

    None means ``data`` is a proper prefix of a header whose end is not known
    yet, so every byte of ``data`` belongs to the header and more must be read.
    Raises ``ProxyProtocolError`` as soon as ``data`` cannot start a header.
    """
    if V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        if len(data) < V2_FIXED:
            return None
        total: int = V2_FIXED + int.from_bytes(data[14:16], "big")
        if total > MAX_HEADER:
            raise ProxyProtocolError(f"v2 header of {total} bytes exceeds {MAX_HEADER}")
        return total
    if V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        end = data.find(b"\r\n", 0, V1_MAX)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"v1 header longer than {V1_MAX} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("v1 header with a bare CR or LF")
        return None
    raise ProxyProtocolError("connection does not start with a PROXY protocol header")


def parse(data: bytes) -> ProxyHeader:
    """Parse one complete header (exactly ``header_length(data)`` bytes)."""
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    raise ProxyProtocolError("not a PROXY protocol header")


def _port(text: bytes) -> int:
    # section 2.1: ports are decimal, 0..65535, without leading zeros
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyProtocolError("v1 header with an invalid port")
    value = int(text)
    if value > 65535:
        raise ProxyProtocolError("v1 header with an invalid port")
    return value


def _parse_v1(data: bytes) -> ProxyHeader:
    if len(data) > V1_MAX or not data.endswith(b"\r\n"):
        raise ProxyProtocolError("v1 header not terminated by CRLF within 107 bytes")
    fields = data[:-2].split(b" ")
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        # section 2.1: the rest of an UNKNOWN line is ignored; use the socket peer
        return ProxyHeader(1, False, None, None, len(data))
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("v1 header must be: PROXY TCP4|TCP6 src dst sport dport")
    version = 4 if fields[1] == b"TCP4" else 6
    try:
        src = ipaddress.ip_address(fields[2].decode("ascii"))
        dst = ipaddress.ip_address(fields[3].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError("v1 header with an invalid address") from None
    if src.version != version or dst.version != version:
        raise ProxyProtocolError("v1 address family does not match the protocol")
    return ProxyHeader(
        1, False, (str(src), _port(fields[4])), (str(dst), _port(fields[5])), len(data)
    )


def _parse_v2(data: bytes) -> ProxyHeader:
    if len(data) < V2_FIXED:
        raise ProxyProtocolError("v2 header truncated")
    ver_cmd, fam = data[12], data[13]
    length = struct.unpack_from("!H", data, 14)[0]
    if len(data) != V2_FIXED + length:
        raise ProxyProtocolError("v2 header length does not match its length field")
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("v2 header with an unsupported version")
    command = ver_cmd & 0x0F
    if command not in (0x0, 0x1):  # section 2.2: other commands must be rejected
        raise ProxyProtocolError("v2 header with an unknown command")
    family, transport = fam >> 4, fam & 0x0F
    if family > 0x3 or transport > 0x2:
        raise ProxyProtocolError("v2 header with an unknown address family or transport")
    if command == 0x0:
        # LOCAL: the balancer's own connection (health check); addresses are ignored
        return ProxyHeader(2, True, None, None, len(data))
    need = _V2_ADDR_LEN.get(family)
    if need is None or family == 0x3:
        # UNSPEC or a UNIX socket: nothing we can use as a client IP
        return ProxyHeader(2, False, None, None, len(data))
    if length < need:
        raise ProxyProtocolError("v2 address block shorter than its family requires")
    body = data[V2_FIXED : V2_FIXED + need]  # TLVs after the addresses are ignored
    if family == 0x1:
        src_b, dst_b, sport, dport = body[0:4], body[4:8], body[8:10], body[10:12]
        src: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(src_b)
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(dst_b)
    else:
        src_b, dst_b, sport, dport = body[0:16], body[16:32], body[32:34], body[34:36]
        src, dst = ipaddress.IPv6Address(src_b), ipaddress.IPv6Address(dst_b)
    return ProxyHeader(
        2,
        False,
        (str(src), struct.unpack("!H", sport)[0]),
        (str(dst), struct.unpack("!H", dport)[0]),
        len(data),
    )


def build_v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A v1 line for ``src`` -> ``dst`` (tests and tools; the guard only receives)."""
    fam = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {fam} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode("ascii")


def build_v2(
    src: tuple[str, int] | None, dst: tuple[str, int] | None = None, *, tlvs: bytes = b""
) -> bytes:
    """A v2 header; ``src=None`` builds a LOCAL command (tests and tools)."""
    if src is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    s = ipaddress.ip_address(src[0])
    d = ipaddress.ip_address(dst[0] if dst else ("0.0.0.0" if s.version == 4 else "::"))
    dport = dst[1] if dst else 0
    fam = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + struct.pack("!HH", src[1], dport) + tlvs
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body
