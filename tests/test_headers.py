"""Which headers cross the guard, as a table: hop-by-hop, forwarding, Host, response repeats."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from guard.http.headers import (
    Forwarding,
    connection_tokens,
    readable_encodings,
    request_headers,
    strip_hop_by_hop,
)


def h(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


UNTRUSTED = Forwarding(peer="192.0.2.10", trusted=False, scheme="http", host="app.example")
TRUSTED = Forwarding(peer="10.0.0.2", trusted=True, scheme="https", host="app.example")


def names(pairs: list[tuple[str, str]]) -> list[str]:
    return [k.lower() for k, _ in pairs]


def get(pairs: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in pairs if k.lower() == name.lower()]


def test_connection_tokens() -> None:
    assert connection_tokens(["keep-alive, X-A", " x-b ,,", "Close"]) == {"keep-alive", "x-a", "x-b", "close"}


@pytest.mark.parametrize("name", ["Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
                                  "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection"])
def test_hop_by_hop_never_forwarded(name: str) -> None:
    out = request_headers(h((name, "x"), ("Accept", "*/*")), UNTRUSTED, None)
    assert name.lower() not in names(out)
    resp: CIMultiDict[str] = CIMultiDict([(name, "x"), ("ETag", "1")])
    strip_hop_by_hop(resp)
    assert name not in resp and "ETag" in resp


def test_fields_named_in_connection_are_dropped_both_ways() -> None:
    out = request_headers(h(("Connection", "X-Private, keep-alive"), ("X-Private", "1"), ("X-Public", "2")),
                          UNTRUSTED, None)
    assert "x-private" not in names(out) and "x-public" in names(out)
    resp: CIMultiDict[str] = CIMultiDict(
        [("Connection", "x-internal"), ("X-Internal", "db1"), ("X-Other", "2")]
    )
    strip_hop_by_hop(resp)
    assert list(resp) == ["X-Other"]


def test_untrusted_peer_forwarding_headers_are_replaced() -> None:
    incoming = h(("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"), ("X-Real-IP", "6.6.6.6"),
                 ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil"), ("X-Forwarded-Port", "1"),
                 ("True-Client-IP", "6.6.6.6"), ("X-Client-IP", "6.6.6.6"), ("Host", "app.example"))
    out = request_headers(incoming, UNTRUSTED, None)
    assert get(out, "X-Forwarded-For") == ["192.0.2.10"]
    assert get(out, "X-Forwarded-Proto") == ["http"]
    assert get(out, "X-Forwarded-Host") == ["app.example"]
    for name in ("Forwarded", "X-Real-IP", "X-Forwarded-Port", "True-Client-IP", "X-Client-IP"):
        assert get(out, name) == []
    assert "6.6.6.6" not in repr(out)


def test_trusted_peer_chain_is_extended() -> None:
    incoming = h(("X-Forwarded-For", "203.0.113.1"), ("X-Forwarded-For", "10.0.0.1"),
                 ("Forwarded", 'for="[2001:db8::1]"'), ("X-Forwarded-Proto", "http"),
                 ("X-Real-IP", "203.0.113.1"))
    out = request_headers(incoming, TRUSTED, None)
    assert get(out, "X-Forwarded-For") == ["203.0.113.1, 10.0.0.1, 10.0.0.2"]
    assert get(out, "Forwarded") == []  # not the header the balancer writes: the client's own
    out = request_headers(incoming, TRUSTED._replace(header="forwarded"), None)
    assert get(out, "Forwarded") == ['for="[2001:db8::1]", for=10.0.0.2;proto=https']
    assert get(out, "X-Forwarded-For") == ["10.0.0.2"]  # the client's chain does not go on
    assert get(out, "X-Forwarded-Proto") == ["http"]       # the balancer saw the client's scheme
    assert get(out, "X-Forwarded-Host") == ["app.example"]  # not sent by the balancer: ours
    assert get(out, "X-Real-IP") == ["203.0.113.1"]


def test_forwarded_node_for_ipv6_is_quoted() -> None:
    fwd = Forwarding(peer="2001:db8::2", trusted=True, scheme="http", host=None, header="forwarded")
    out = request_headers(h(("Forwarded", "for=192.0.2.1")), fwd, None)
    assert get(out, "Forwarded") == ['for=192.0.2.1, for="[2001:db8::2]";proto=http']
    assert get(out, "X-Forwarded-Host") == []


def test_host_override_and_keep() -> None:
    incoming = h(("Host", "app.example"), ("Accept", "*/*"))
    assert get(request_headers(incoming, UNTRUSTED, None), "Host") == ["app.example"]
    assert get(request_headers(incoming, UNTRUSTED, "legacy:8080"), "Host") == ["legacy:8080"]


def test_repeated_names_keep_one_spelling_and_order() -> None:
    out = request_headers(h(("X-A", "1"), ("x-a", "2"), ("X-B", "3"), ("X-A", "4")), UNTRUSTED, None)
    assert [p for p in out if p[0].lower() in ("x-a", "x-b")] == [("X-A", "1"), ("X-A", "2"), ("X-B", "3"),
                                                                   ("X-A", "4")]


def test_expect_is_answered_not_forwarded() -> None:
    assert "expect" not in names(request_headers(h(("Expect", "100-continue")), UNTRUSTED, None))


def test_response_set_cookie_repeats_kept_in_order() -> None:
    resp: CIMultiDict[str] = CIMultiDict(h(("Set-Cookie", "a=1"), ("Content-Type", "text/html"),
                                           ("Set-Cookie", "b=2"), ("set-cookie", "c=3"), ("Keep-Alive", "1")))
    strip_hop_by_hop(resp)
    assert resp.getall("Set-Cookie") == ["a=1", "b=2", "c=3"]
    assert "Keep-Alive" not in resp


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gzip, deflate, br, zstd", "gzip, deflate"),
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", "gzip;q=0.8"),
        ("br", "identity"),  # dropping the field would mean "anything goes" (RFC 9110 section 12.5.3)
        ("identity", "identity"),
    ],
)
def test_readable_encodings(value: str, expected: str) -> None:
    assert readable_encodings([("Accept-Encoding", value), ("X", "1")]) == [("Accept-Encoding", expected),
                                                                         ("X", "1")]
