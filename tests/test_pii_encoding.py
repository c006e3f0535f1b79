"""Content-Encoding around the rewriter (gzip, deflate, br) and the response header changes."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import brotli  # type: ignore[import-untyped]
import pytest
from multidict import CIMultiDict

from guard.pii.encoding import BodyTransform, DecodeError, parse_content_encoding
from guard.pii.policy import default_policy
from guard.pii.response import header_changes, html_body, is_rewritable, media_type
from guard.pii.rewriter import HTMLRewriter
from tests.test_pii_support import Vault

PAGE = (Path(__file__).parent / "fixtures" / "html" / "contact_form_table.html").read_bytes()


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


ENCODERS = {
    ("gzip",): gzip.compress,
    ("deflate",): zlib.compress,
    ("br",): brotli.compress,
    ("gzip", "br"): lambda d: brotli.compress(gzip.compress(d)),
}
DECODERS = {"gzip": gzip.decompress, "deflate": zlib.decompress, "br": brotli.decompress}


def run(body: bytes, codings: tuple[str, ...], reencode: bool, chunk: int) -> bytes:
    bt = BodyTransform(HTMLRewriter(default_policy(), Vault().tokenize, "utf-8"), codings, reencode)
    out = [b"".join(bt.feed(body[i : i + chunk])) for i in range(0, len(body), chunk)]
    return b"".join(out) + b"".join(bt.close())


@pytest.mark.parametrize("codings", list(ENCODERS))
@pytest.mark.parametrize("reencode", [True, False])
@pytest.mark.parametrize("chunk", [1, 100, 1 << 20])
def test_compressed_pages_are_rewritten(codings: tuple[str, ...], reencode: bool, chunk: int) -> None:
    out = run(ENCODERS[codings](PAGE), codings, reencode, chunk)
    html = DECODERS[codings[-1]](out) if reencode else out
    assert b"090-1234-5678" not in html and html.count(b"pii_") == 4
    assert html.startswith(PAGE[:200])


def test_raw_deflate_and_multi_member_gzip() -> None:
    assert b"pii_" in run(_raw_deflate(PAGE), ("deflate",), False, 50)
    half = len(PAGE) // 2
    two_members = gzip.compress(PAGE[:half]) + gzip.compress(PAGE[half:])
    out = run(two_members, ("gzip",), False, 64)
    assert len(out) > len(PAGE) - 200 and b"090-1234-5678" not in out


@pytest.mark.parametrize("codings", [("gzip",), ("deflate",), ("br",)])
def test_corrupt_or_truncated_body_raises(codings: tuple[str, ...]) -> None:
    good = ENCODERS[codings](PAGE)
    with pytest.raises(DecodeError):
        run(good[: len(good) // 2], codings, True, 100)
    with pytest.raises(DecodeError):
        run(b"\x1f\x8b\x08\x00garbage" * 5 if codings != ("br",) else b"\xff" * 50, codings, True, 100)


def test_bomb_output_comes_in_bounded_pieces() -> None:
    bomb = gzip.compress(b"<p>" + b" " * 20_000_000)
    bt = BodyTransform(HTMLRewriter(default_policy(), None, "utf-8"), ("gzip",), reencode=False)
    biggest = 0
    for piece in bt.feed(bomb):
        biggest = max(biggest, len(piece))
    assert biggest <= 256 * 1024


def test_parse_content_encoding() -> None:
    assert parse_content_encoding(["gzip"]) == ("gzip",)
    assert parse_content_encoding(["x-gzip, identity", "BR"]) == ("gzip", "br")
    assert parse_content_encoding([]) == ()
    assert parse_content_encoding(["zstd"]) is None
    assert parse_content_encoding(["compress"]) is None


@pytest.mark.parametrize(
    ("method", "status", "ctype", "enc", "expected"),
    [
        ("GET", 200, "text/html; charset=utf-8", [], True),
        ("POST", 400, "TEXT/HTML", ["gzip"], True),
        ("GET", 200, "application/xhtml+xml", ["br"], True),
        ("HEAD", 200, "text/html", [], False),
        ("GET", 206, "text/html", [], False),
        ("GET", 304, "text/html", [], False),
        ("GET", 200, "application/json", [], False),
        ("GET", 200, "text/html", ["zstd"], False),
        ("GET", 200, None, [], False),
    ],
)
def test_is_rewritable(method: str, status: int, ctype: str | None, enc: list[str], expected: bool) -> None:
    assert is_rewritable(method, status, ctype, enc) is expected


def test_media_type() -> None:
    assert media_type('text/html; Charset="Shift_JIS"') == ("text/html", "Shift_JIS")
    assert media_type(None) == ("", None)


def test_header_changes_without_tokens() -> None:
    headers = CIMultiDict([("Content-Length", "10"), ("Content-Encoding", "gzip"), ("ETag", '"abc"'),
                           ("Content-MD5", "x"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    header_changes(headers.get("ETag"), None, ("gzip",), reencode=True, tokenizes=False).apply(headers)
    assert "Content-Length" not in headers and "Content-MD5" not in headers
    assert headers["ETag"] == 'W/"abc"' and headers["Content-Encoding"] == "gzip"
    assert headers["Accept-Ranges"] == "none" and headers.getall("Set-Cookie") == ["a=1", "b=2"]


def test_header_changes_with_tokens_and_identity() -> None:
    headers = CIMultiDict([("Content-Encoding", "br"), ("ETag", 'W/"abc"'), ("Last-Modified", "x"),
                           ("Cache-Control", "public, max-age=60, s-maxage=600")])
    changes = header_changes(headers.get("ETag"), headers.get("Cache-Control"), ("br",), reencode=False,
                             tokenizes=True)
    changes.apply(headers)
    assert "Content-Encoding" not in headers and "ETag" not in headers and "Last-Modified" not in headers
    assert headers["Cache-Control"] == "private, max-age=60"


def test_html_body_hands_back_what_it_parsed() -> None:
    """The proxy asks this of every HTML response: the codings and charset come back with the answer."""
    assert html_body("GET", 200, 'text/html; charset="Shift_JIS"', ["gzip"]) == (("gzip",), "Shift_JIS")
    assert html_body("GET", 400, "application/xhtml+xml", []) == ((), None)
    assert html_body("HEAD", 200, "text/html", []) is None
    assert html_body("GET", 200, "text/html", ["zstd-unknown"]) is None
    assert html_body("GET", 200, "text/plain", []) is None
