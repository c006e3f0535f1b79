"""Which character encoding a page uses, and whether the byte-level rewriter may touch it.

The rewriter never decodes a page: it finds tags on bytes and decodes only the
attribute values it inspects.  That is safe exactly when every byte the HTML
grammar cares about (``< > " ' = /``, whitespace, ``&``) always stands for
itself.  It does in UTF-8, in single-byte encodings, and in the CJK multi-byte
encodings whose trail bytes are >= 0x40 (Shift_JIS/CP932, EUC-JP, EUC-KR/CP949,
Big5, GBK/GB18030).  It does not in ISO-2022-JP (JIS bytes are printable ASCII),
UTF-7, HZ or UTF-16/32: pages in those pass through untouched, and the caller
is told (``unsupported-charset``).

The encoding is chosen as a browser would (WHATWG Encoding, HTML 13.2.3): a byte
order mark, else the transport's ``charset`` (the caller's), else a
``<meta charset>`` or ``http-equiv`` declaration in the first 1024 bytes.  Labels
map as browsers map them: ``shift_jis`` is Windows-31J (CP932), ``iso-8859-1`` and
``us-ascii`` are windows-1252, ``tis-620`` is windows-874.
"""

from __future__ import annotations

import codecs
import functools
import re

from guard.pii.lexer import ATTR_RE, TAG_RE, WS

PRESCAN_BYTES = 1024
"""How far into a page a ``<meta>`` charset declaration is looked for (HTML 13.2.3.2)."""

UNSAFE = "unsafe"
"""``resolve`` result for a known encoding the byte-level rewriter must not touch."""

# WHATWG labels whose Python codec differs from what browsers actually use.
_ALIASES: dict[str, str] = {
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932", "ms_kanji": "cp932",
    "csshiftjis": "cp932", "windows-31j": "cp932", "ms932": "cp932",
    "euc-jp": "euc_jp", "x-euc-jp": "euc_jp", "cseucpkdfmtjapanese": "euc_jp",
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "l1": "cp1252", "ascii": "cp1252",
    "us-ascii": "cp1252", "iso_8859-1": "cp1252", "cp819": "cp1252", "ibm819": "cp1252",
    "iso-8859-9": "cp1254", "latin5": "cp1254", "iso-8859-11": "cp874", "tis-620": "cp874",
    "windows-874": "cp874", "big5": "cp950", "big5-hkscs": "big5hkscs", "x-x-big5": "cp950",
    "gb2312": "gbk", "x-gbk": "gbk", "euc-kr": "cp949", "ks_c_5601-1987": "cp949", "windows-949": "cp949",
    "unicode-1-1-utf-8": "utf-8", "utf8": "utf-8", "x-unicode20utf8": "utf-8",
}
_SAFE_MULTIBYTE = frozenset({
    "utf-8", "cp932", "shift_jis", "shift_jis_2004", "shift_jisx0213", "euc_jp", "euc_jis_2004",
    "euc_jisx0213", "cp949", "euc_kr", "cp950", "big5", "big5hkscs", "gbk", "gb2312", "gb18030",
})
# ASCII-compatible single-byte families (EBCDIC code pages such as cp037 are not, and are excluded).
_SAFE_SINGLE_BYTE = re.compile(r"(?:iso8859-\d+|cp125\d|cp874|koi8-[a-z]+|mac-[a-z]+|tis-620|ascii"
                               r"|cp(?:437|737|775|85\d|86\d))\Z")
_META = re.compile(rb"<meta[%s/]" % WS, re.IGNORECASE)
_CONTENT_CHARSET = re.compile(
    rb"""charset[%s]*=[%s]*(?:"([^"]*)"?|'([^']*)'?|([^\s;"']+))""" % (WS, WS), re.IGNORECASE
)
_COMMENT = re.compile(rb"<!--(?s:.)*?(?:-->|\Z)")


def resolve(label: str | bytes | None) -> str | None:
    """The Python codec for an encoding label; ``UNSAFE`` if known but not byte-safe; None if unknown."""
    if label is None:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "replace")
    return _resolve(label) if len(label) <= 64 else _resolve.__wrapped__(label)


@functools.lru_cache(maxsize=128)
def _resolve(label: str) -> str | None:
    """``resolve`` for a text label, remembered: a site names one or two charsets, once per page."""
    key = label.strip().strip("\"'").lower()
    if not key or len(key) > 40:
        return None
    key = _ALIASES.get(key, key)
    try:
        name = codecs.lookup(key).name
    except (LookupError, ValueError):  # ValueError: a NUL in the label (codecs.lookup rejects it)
        return None
    if name in _SAFE_MULTIBYTE or _SAFE_SINGLE_BYTE.match(name):
        return name
    return UNSAFE


def bom(head: bytes) -> str | None:
    """The encoding a byte order mark announces (``UNSAFE`` for UTF-16/32), else None."""
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return UNSAFE
    return None


def sniff_meta(head: bytes) -> str | None:
    """The first label declared by a ``<meta>`` in ``head`` that names a known encoding (comments skipped).

    As in the spec's prescan, a declaration of an unknown encoding is passed over.
    """
    head = _COMMENT.sub(b"", head[:PRESCAN_BYTES])
    for m in _META.finditer(head):
        tag_m = TAG_RE.match(head, m.start())
        end = tag_m.end() - 1 if tag_m else len(head)
        attrs: dict[bytes, bytes] = {}
        for a in ATTR_RE.finditer(head, m.end() - 1, end):
            name = a.group("name").lower()
            value = a.group("dq") or a.group("sq") or a.group("uq") or b""
            attrs.setdefault(name, value)
        label = None
        if b"charset" in attrs:
            label = attrs[b"charset"].decode("ascii", "replace").strip()
        elif attrs.get(b"http-equiv", b"").strip().lower() == b"content-type" and b"content" in attrs:
            c = _CONTENT_CHARSET.search(attrs[b"content"])
            if c:
                label = (c.group(1) or c.group(2) or c.group(3) or b"").decode("ascii", "replace")
        if label is not None and (resolve(label) is not None or _is_utf16(label)):
            return label
    return None


def choose(head: bytes, declared: str | None) -> str | None:
    """The codec for a page: BOM, else the caller's ``declared`` charset, else ``<meta>``.

    Returns a codec name, ``UNSAFE``, or None when nothing usable is declared (the
    rewriter then decodes each value as UTF-8 when valid, else with its fallback).
    A ``<meta>`` naming UTF-16 means UTF-8, as in browsers (the bytes were read as
    ASCII to find it); a declared but unknown label is ignored.
    """
    from_bom = bom(head)
    if from_bom is not None:
        return from_bom
    if declared:
        codec = resolve(declared)
        if codec is not None:
            return codec
    label = sniff_meta(head)
    if label is None:
        return None
    if _is_utf16(label):
        return "utf-8"
    return resolve(label)


def _is_utf16(label: str) -> bool:
    return label.strip().lower().startswith(("utf-16", "utf16"))
