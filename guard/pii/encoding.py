"""Content-Encoding around the rewriter: decode the upstream's gzip/deflate/br, rewrite, re-encode.

The proxy asks the upstream for compressed bodies (it forwards the client's
``Accept-Encoding``) and does not decompress on its own, so an HTML body reaches
the guard compressed.  ``BodyTransform`` streams it: decode a chunk, rewrite,
re-encode with the same coding (or send identity when the caller prefers CPU
to bandwidth).  Every re-encoded chunk is flushed, so a slow page still reaches
the browser progressively.

Limits: decoded output is produced in pieces of at most ``PIECE`` bytes for
gzip and deflate (zlib's ``max_length``), so a decompression bomb costs time,
not memory.  Brotli 1.1 (the version mitmproxy pins) has no output limit per
call, so br input is fed in ``BR_INPUT_SLICE`` slices, which bounds memory per
call for any realistic page but not against a deliberately crafted bomb from the
upstream itself.  A body that fails to decode raises ``DecodeError``: bytes may
already have been sent, so the caller must end the response by closing the
connection (a truncated body, never a silently corrupted one).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Protocol

import brotli  # type: ignore[import-untyped]  # Brotli 1.1 ships no type information

PIECE = 256 * 1024
BR_INPUT_SLICE = 4096
GZIP_LEVEL = 5
"""zlib level for re-encoding: levels above 6 cost much more CPU for a few percent."""
BR_QUALITY = 4
"""Brotli quality for re-encoding: 4 is close to gzip's speed; 11 is for static files, not proxies."""

SUPPORTED = frozenset({"gzip", "deflate", "br"})


class DecodeError(ValueError):
    """The upstream's body does not decode with its declared Content-Encoding."""


class BodyRewriter(Protocol):
    """What ``BodyTransform`` drives: ``HTMLRewriter`` (or any rewriter with the same shape)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


def parse_content_encoding(values: Iterable[str]) -> tuple[str, ...] | None:
    """The codings applied, in order (``identity`` dropped); None if one is not supported."""
    out: list[str] = []
    for value in values:
        for token in value.split(","):
            coding = token.strip().lower()
            if coding in ("", "identity"):
                continue
            coding = "gzip" if coding == "x-gzip" else coding
            if coding not in SUPPORTED:
                return None
            out.append(coding)
    return tuple(out)


class _Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def close(self) -> Iterator[bytes]: ...


class _ZlibDecoder:
    """gzip (several members allowed, RFC 1952) or deflate (zlib-wrapped, or raw as some servers send)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._obj: zlib._Decompress | None = zlib.decompressobj(31) if gzip else None
        self._head = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._obj is None:   # deflate: zlib header or raw? (RFC 9110 says zlib; IIS sent raw)
            self._head += data
            if len(self._head) < 2:
                return
            b0, b1 = self._head[0], self._head[1]
            wbits = 15 if b0 & 0x0F == 8 and (b0 << 8 | b1) % 31 == 0 else -15
            self._obj = zlib.decompressobj(wbits)
            data, self._head = self._head, b""
        yield from self._run(data)

    def _run(self, data: bytes) -> Iterator[bytes]:
        obj = self._obj
        while data and obj is not None:
            try:
                out = obj.decompress(data, PIECE)
            except zlib.error as exc:
                raise DecodeError(f"bad {'gzip' if self._gzip else 'deflate'} data: {exc}") from None
            if out:
                yield out
            data = obj.unconsumed_tail
            if obj.eof:
                rest = obj.unused_data
                if self._gzip and rest.lstrip(b"\0"):   # another gzip member follows
                    obj = self._obj = zlib.decompressobj(31)
                    data = rest
                else:
                    break

    def close(self) -> Iterator[bytes]:
        if self._obj is None:
            if self._head:
                raise DecodeError("truncated deflate data")
            return
        out = self._obj.flush()
        if out:
            yield out
        if not self._obj.eof:
            raise DecodeError(f"truncated {'gzip' if self._gzip else 'deflate'} data")


class _BrotliDecoder:
    def __init__(self) -> None:
        self._obj = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), BR_INPUT_SLICE):
            try:
                out = bytes(self._obj.process(data[i : i + BR_INPUT_SLICE]))
            except brotli.error as exc:
                raise DecodeError(f"bad br data: {exc}") from None
            if out:
                yield out

    def close(self) -> Iterator[bytes]:
        if not bool(self._obj.is_finished()):
            raise DecodeError("truncated br data")
        return iter(())


class _Encoder(Protocol):
    def feed(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...


class _ZlibEncoder:
    def __init__(self, gzip: bool) -> None:
        self._obj = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31 if gzip else 15)

    def feed(self, data: bytes) -> bytes:
        return self._obj.compress(data) + self._obj.flush(zlib.Z_SYNC_FLUSH) if data else b""

    def close(self) -> bytes:
        return self._obj.flush(zlib.Z_FINISH)


class _BrotliEncoder:
    def __init__(self) -> None:
        self._obj = brotli.Compressor(quality=BR_QUALITY, mode=brotli.MODE_TEXT)

    def feed(self, data: bytes) -> bytes:
        return bytes(self._obj.process(data)) + bytes(self._obj.flush()) if data else b""

    def close(self) -> bytes:
        return bytes(self._obj.finish())


def _decoder(coding: str) -> _Decoder:
    return _BrotliDecoder() if coding == "br" else _ZlibDecoder(gzip=coding == "gzip")


def _encoder(coding: str) -> _Encoder:
    return _BrotliEncoder() if coding == "br" else _ZlibEncoder(gzip=coding == "gzip")


def decode_whole(body: bytes, coding: str, limit: int) -> bytes | None:
    """A whole body with one content coding undone; None when it does not decode or decodes
    past ``limit`` bytes (decoding stops there: a compression bomb costs ``limit``, no more)."""
    parts: list[bytes] = []
    size = 0
    try:
        for piece in _decoded(_decoder(coding), body):
            size += len(piece)
            if size > limit:
                return None
            parts.append(piece)
    except DecodeError:
        return None
    return b"".join(parts)


def _decoded(decoder: _Decoder, body: bytes) -> Iterator[bytes]:
    yield from decoder.feed(body)
    yield from decoder.close()   # only once fed: a decoder's close may check that it finished


def output_coding(codings: tuple[str, ...], reencode: bool) -> str | None:
    """The Content-Encoding of the rewritten body: the outermost coding, or None (identity)."""
    return codings[-1] if reencode and codings else None


class BodyTransform:
    """Decode -> rewrite -> re-encode, one chunk at a time.  Consume each iterator fully."""

    def __init__(self, rewriter: BodyRewriter, codings: tuple[str, ...], reencode: bool = True) -> None:
        self._rewriter = rewriter
        self._decoders = [_decoder(c) for c in reversed(codings)]   # the last coding applied is undone first
        out = output_coding(codings, reencode)
        self._encoder = _encoder(out) if out else None

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        for piece in self._decode(chunk, 0):
            yield from self._emit(self._rewriter.feed(piece))

    def close(self) -> Iterator[bytes]:
        for piece in self._close_decoders(0):
            yield from self._emit(self._rewriter.feed(piece))
        yield from self._emit(self._rewriter.close())
        if self._encoder is not None:
            tail = self._encoder.close()
            if tail:
                yield tail

    def _decode(self, data: bytes, level: int) -> Iterator[bytes]:
        if level == len(self._decoders):
            yield data
            return
        for piece in self._decoders[level].feed(data):
            yield from self._decode(piece, level + 1)

    def _close_decoders(self, level: int) -> Iterator[bytes]:
        if level == len(self._decoders):
            return
        for piece in self._decoders[level].close():
            yield from self._decode(piece, level + 1)
        yield from self._close_decoders(level + 1)

    def _emit(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        if self._encoder is None:
            yield data
            return
        out = self._encoder.feed(data)
        if out:
            yield out
