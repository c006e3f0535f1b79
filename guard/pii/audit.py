"""``guard audit``: find the PII a page hands to whoever loads it, before an attacker does.

The incident's form was only visible after login, and nobody looked at its
source.  The audit fetches pages (with the operator's cookies, so it sees what a
logged-in user sees) and runs the guard's own detectors over them:

* input values and ``data-*`` attributes, through the same ``HTMLRewriter`` the
  guard runs (so ``<input`` inside a script or a comment is not a field, exactly
  as in production), reported per field name and scope (``hidden``, ``inputs``,
  ``data``);
* every other attribute value (``href="mailto:..."``, ``<meta content>``), as ``attr``;
* the text of the page, scripts and comments included (``text``): a simple scan
  of what remains once tags are cut out, line by line.

Only kinds and counts are reported.  ``--show-masked`` adds a masked sample
(``+81 **-****-5678``, ``t***@example.jp``) so an operator can tell which value
it is without the report becoming a leak of its own; values are never printed.
Run it through the guard to check the fix: a protected page reports nothing in
its fields.
"""

from __future__ import annotations

import asyncio
import codecs
import html
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from guard.pii import charset as charsets
from guard.pii.detect import EMAIL, PHONE, USER_ID, Detector, builtin_detectors, kinds_in
from guard.pii.element import Where
from guard.pii.mask import Mask
from guard.pii.policy import Mode, Policy, Scope, Selector
from guard.pii.response import media_type
from guard.pii.rewriter import HTMLRewriter

MAX_PAGE_BYTES = 10 * 1024 * 1024
"""Bytes of a page the audit reads; the rest is ignored (and said so)."""
TEXT_PIECE = 4096
"""Text is scanned in lines cut to this size, so a minified script is not read as one 1 MB value."""
SAMPLES = 3
"""Masked samples kept per row."""

_WHERE_ORDER = {"hidden": 0, "inputs": 1, "data": 2, "css": 3, "attr": 4, "text": 5}
_TAG = re.compile(r"<[A-Za-z][^>]*>")
_TAG_NAME = re.compile(r"<([A-Za-z][A-Za-z0-9:-]*)")
_ATTR = re.compile(r"""([^\s"'<>/=]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""")
_CUT = re.compile(r"<[^>]*>")
_RAW_BLOCK = re.compile(
    r"<!--(.*?)(?:-->|\Z)|<(?:script|style|textarea)\b[^>]*>(.*?)(?:</(?:script|style|textarea)\s*>|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_TEXTUAL = ("text/", "application/json", "application/xml", "application/javascript")


@dataclass(frozen=True, slots=True)
class Finding:
    """One row: how many values of one kind sit in one field (or in the text) of one page."""

    where: str                  # hidden | inputs | data | attr | text
    field: str                  # the input's name, the attribute (tag[attr]), or "" for text
    kind: str
    count: int
    samples: tuple[str, ...] = ()   # masked, and only with --show-masked


@dataclass(slots=True)
class PageAudit:
    url: str
    status: int | None = None
    final_url: str | None = None
    content_type: str = ""
    truncated: bool = False
    error: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(f.count for f in self.findings)


# ---- the scan (pure) ---------------------------------------------------------------------------


class _Tally:
    def __init__(self, keep_samples: bool) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.samples: dict[tuple[str, str, str], list[str]] = {}
        self.keep = keep_samples

    def add(self, where: str, name: str, kind: str, value: str) -> None:
        key = (where, name, kind)
        self.counts[key] += 1
        if self.keep:
            got = self.samples.setdefault(key, [])
            sample = masked(kind, value)
            if len(got) < SAMPLES and sample not in got:
                got.append(sample)

    def findings(self) -> list[Finding]:
        rows = [
            Finding(w, n, k, c, tuple(self.samples.get((w, n, k), ())))
            for (w, n, k), c in self.counts.items()
        ]
        return sorted(rows, key=lambda f: (_WHERE_ORDER.get(f.where, 9), f.field, f.kind))


def audit_html(
    body: bytes, declared_charset: str | None = None, detectors: Sequence[Detector] | None = None,
    *, show_masked: bool = False, html_page: bool = True,
) -> list[Finding]:
    """The PII in one page body, by where it sits; values stay in this function (masked samples aside)."""
    dets = tuple(detectors) if detectors is not None else builtin_detectors()
    tally = _Tally(show_masked)
    text = _decode(body, declared_charset)
    if not html_page:
        _text(text, dets, tally, unescape=False)
        return tally.findings()
    _fields(text, dets, tally)
    # Scripts, styles, textareas and comments are text to a browser, but an <input> written
    # inside one is still in the page source: they are scanned whole, tags and all.
    raw: list[str] = []

    def lift(m: re.Match[str]) -> str:
        raw.append(m.group(1) if m.group(1) is not None else m.group(2))
        return "\n"

    rest = _RAW_BLOCK.sub(lift, text)
    _attributes(rest, dets, tally)
    _text(_CUT.sub("\n", rest), dets, tally, unescape=True)
    _text("\n".join(raw), dets, tally, unescape=False)
    return tally.findings()


def _text(text: str, dets: tuple[Detector, ...], tally: _Tally, *, unescape: bool) -> None:
    for line in text.splitlines():
        for i in range(0, len(line), TEXT_PIECE):
            piece = line[i : i + TEXT_PIECE]
            if not piece.strip():
                continue
            value = html.unescape(piece) if unescape and "&" in piece else piece
            for kind in kinds_in(value, dets):
                tally.add("text", "", kind, value)


def _decode(body: bytes, declared: str | None) -> str:
    """The page as text, whatever its charset (the audit may decode what the rewriter passes by)."""
    codec = charsets.choose(body[: charsets.PRESCAN_BYTES], declared)
    if codec == charsets.UNSAFE:
        label = declared or charsets.sniff_meta(body) or ""
        try:
            codec = codecs.lookup(label.strip().lower()).name
        except LookupError:
            codec = None
    if codec is None:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body.decode("cp1252", "replace")
    return body.decode(codec, "replace")


def _fields(text: str, dets: tuple[Detector, ...], tally: _Tally) -> None:
    """Input values and data-* attributes, found by the guard's own rewriter (re-read as UTF-8)."""
    policy = Policy(
        selectors=(Selector(Mode.TOKENIZE, kinds=frozenset(d.kind for d in dets),
                            scopes=frozenset({Scope.HIDDEN, Scope.INPUTS, Scope.DATA})),),
        detectors=dets,
    )

    def record(kind: str, value: str, where: Where) -> str:
        tally.add(where.scope, where.field, kind, value)
        return ""

    rw = HTMLRewriter(policy, None, "utf-8", field_tokenizer=record)
    rw.feed(text.encode("utf-8"))
    rw.close()


def _attributes(text: str, dets: tuple[Detector, ...], tally: _Tally) -> None:
    """Every other attribute value: links, meta tags, titles (the rewriter's scopes are skipped)."""
    for tag in _TAG.finditer(text):
        source = tag.group()
        name_m = _TAG_NAME.match(source)
        tag_name = name_m.group(1).lower() if name_m else ""
        for m in _ATTR.finditer(source, name_m.end() if name_m else 0):
            attr = m.group(1).lower()
            if attr.startswith("data-") or (tag_name == "input" and attr == "value"):
                continue
            value = next((v for v in m.group(2, 3, 4) if v is not None), "")
            if not value:
                continue
            value = html.unescape(value) if "&" in value else value
            for kind in kinds_in(value, dets):
                tally.add("attr", f"{tag_name}[{attr}]", kind, value)


_EMAIL_SPAN = re.compile(r"([^\s@<>\"':;,()]+)@([^\s@<>\"':;,()]+\.[^\s@<>\"':;,()]+)")
_PHONE_SPAN = re.compile(r"\+?[\d(][\d\s().\-]{6,}\d")
_UID_SPAN = re.compile(r"U[0-9a-fA-F]{32}")
_PHONE_MASK = Mask(text="****", keep_last=4)


def masked(kind: str, value: str) -> str:
    """A sample a person can recognise and an attacker cannot use: never more than a few characters."""
    if kind == EMAIL:
        m = _EMAIL_SPAN.search(value)
        if m is not None:
            return f"{m.group(1)[:1]}***@{m.group(2)}"
    elif kind == PHONE:
        from guard.pii.detect import normalize

        m = _PHONE_SPAN.search(normalize(value))
        if m is not None:
            return _PHONE_MASK.apply(m.group().strip())
    elif kind == USER_ID:
        m = _UID_SPAN.search(value)
        if m is not None:
            return "U" + "*" * 28 + m.group()[-4:]
    return "****"


# ---- fetching ----------------------------------------------------------------------------------


async def audit_urls(
    urls: Iterable[str], cookies: dict[str, str], *, time_limit: float = 15.0, insecure: bool = False,
    detectors: Sequence[Detector] | None = None, show_masked: bool = False, max_bytes: int = MAX_PAGE_BYTES,
) -> list[PageAudit]:
    """Fetch each URL once (redirects followed, cookies sent) and audit what came back."""
    import aiohttp
    from yarl import URL

    headers = {"User-Agent": "loginguard-audit", "Accept": "text/html,*/*;q=0.5"}
    connector = aiohttp.TCPConnector(ssl=False if insecure else True)
    # The operator's cookies go in a jar, as host-only cookies of each audited URL: a redirect
    # to another host must never carry the session cookie there.
    jar = aiohttp.CookieJar(unsafe=True)
    out: list[PageAudit] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=time_limit), headers=headers,
        cookie_jar=jar, trust_env=True,
    ) as session:
        for url in urls:
            page = PageAudit(url)
            out.append(page)
            try:
                if cookies:
                    jar.update_cookies(cookies, response_url=URL(url))
                async with session.get(url, allow_redirects=True, max_redirects=5) as resp:
                    page.status = resp.status
                    page.final_url = str(resp.url) if str(resp.url) != url else None
                    ctype = resp.headers.get("Content-Type", "")
                    page.content_type = media_type(ctype)[0]
                    body = bytearray()
                    async for chunk in resp.content.iter_any():
                        body += chunk
                        if len(body) > max_bytes:
                            page.truncated = True
                            del body[max_bytes:]
                            break
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                page.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            is_html = page.content_type in ("text/html", "application/xhtml+xml", "")
            if not is_html and not page.content_type.startswith(_TEXTUAL):
                continue
            page.findings = await asyncio.to_thread(
                audit_html, bytes(body), media_type(ctype)[1], detectors,
                show_masked=show_masked, html_page=is_html,
            )
    return out


# ---- reports -----------------------------------------------------------------------------------


def render_table(pages: Sequence[PageAudit], show_masked: bool = False) -> str:
    """One row per URL, place, field and kind; a page with nothing found still gets a row."""
    head = ["URL", "STATUS", "WHERE", "FIELD", "KIND", "COUNT"] + (["SAMPLE"] if show_masked else [])
    rows: list[list[str]] = []
    for p in pages:
        status = str(p.status) if p.status is not None else "-"
        if p.error is not None:
            rows.append([p.url, status, "error", "-", p.error, "-"] + (["-"] if show_masked else []))
            continue
        if not p.findings:
            note = "no PII found" + (" (truncated)" if p.truncated else "")
            rows.append([p.url, status, "-", "-", note, "0"] + (["-"] if show_masked else []))
            continue
        for f in p.findings:
            row = [p.url, status, f.where, f.field or "-", f.kind, str(f.count)]
            if show_masked:
                row.append(", ".join(f.samples) or "-")
            rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    found = sum(p.total for p in pages)
    leaking = sum(1 for p in pages if p.findings)
    lines.append("")
    lines.append(f"{found} PII value(s) in {leaking} of {len(pages)} page(s); values are never shown"
                 + ("" if show_masked else " (--show-masked for masked samples)"))
    hidden = sum(f.count for p in pages for f in p.findings if f.where == "hidden")
    if hidden:
        lines.append(f"{hidden} in hidden fields: the guard's default pii policy tokenizes those.")
    return "\n".join(lines)


def render_json(pages: Sequence[PageAudit], show_masked: bool = False) -> str:
    doc = []
    for p in pages:
        entry: dict[str, object] = {
            "url": p.url, "status": p.status, "final_url": p.final_url, "content_type": p.content_type,
            "truncated": p.truncated, "error": p.error, "total": p.total,
            "findings": [
                {"where": f.where, "field": f.field, "kind": f.kind, "count": f.count,
                 **({"samples": list(f.samples)} if show_masked else {})}
                for f in p.findings
            ],
        }
        doc.append(entry)
    return json.dumps(doc, indent=2, ensure_ascii=False)


def exit_code(pages: Sequence[PageAudit]) -> int:
    """1 when PII was found (a leak to fix), 2 when a page could not be fetched and none leaked, else 0."""
    if any(p.findings for p in pages):
        return 1
    return 2 if any(p.error is not None for p in pages) else 0


def run(
    urls: Sequence[str], cookies: Sequence[str], *, fmt: str = "table", show_masked: bool = False,
    time_limit: float = 15.0, insecure: bool = False, config: str | None = None,
) -> int:
    """The ``guard audit`` command: ``cookies`` as ``NAME=VALUE``; custom detectors from ``config``."""
    import sys

    jar: dict[str, str] = {}
    for c in cookies:
        name, sep, value = c.partition("=")
        if not sep or not name.strip():
            print(f"guard audit: --cookie wants NAME=VALUE (got {c!r})", file=sys.stderr)
            return 2
        jar[name.strip()] = value.strip()
    detectors: Sequence[Detector] | None = None
    if config is not None:
        from guard.config import load_config
        from guard.yamlsource import SourceError

        try:
            detectors = load_config(config).pii.to_policy().detectors
        except (SourceError, OSError) as exc:
            print(f"guard audit: {exc}", file=sys.stderr)
            return 2
    pages = asyncio.run(audit_urls(
        urls, jar, time_limit=time_limit, insecure=insecure, detectors=detectors, show_masked=show_masked,
    ))
    print(render_json(pages, show_masked) if fmt == "json" else render_table(pages, show_masked))
    return exit_code(pages)
