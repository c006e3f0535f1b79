"""Streaming HTML rewriter: PII in hidden fields (and wherever the policy says) replaced on the fly.

``HTMLRewriter(policy, tokenizer_cb, charset)``, then ``feed(chunk) -> bytes`` for
every chunk of the body and ``close() -> bytes`` at the end; ``report`` counts
what was done.  Every byte outside a changed start tag comes out exactly as it
went in, and only a tag cut by a chunk boundary (up to ``max_tag_bytes``) or a
few bytes of a possible end marker are ever held back, so memory stays bounded
however large the page.

Why a purpose-built byte scanner rather than a parser library
--------------------------------------------------------------
Measured with ``bench/bench_html.py`` (one core of a shared 2-vCPU VM, CPython
3.11, best of several runs; MB/s of HTML; the pages are generated there: a
10 KB contact form with 7 inputs, a 1 MB listing with the form embedded, and
the same 1 MB listing with no input and no PII):

=============================================  ==========  =========  ===========
candidate                                      10 KB form  1 MB page  1 MB no PII
=============================================  ==========  =========  ===========
this scanner, default policy (rewrite)              58-62    109-116      125-129
this scanner, detect in all inputs + data-*         55-57      52-55        50-55
stdlib ``html.parser`` (tokenize only)                 10          9            9
lxml (parse, select, serialise)                        49      40-46        40-48
selectolax/lexbor (parse, select, serialise)          146     81-106       87-102
lol_html via python-lolhtml (rewrite)             276-302    405-464      480-520
=============================================  ==========  =========  ===========

(Ranges: two runs on a VM shared with other jobs.)  A 100 KB page costs
0.82-0.87 ms (1.2-1.3 ms with gunzip + gzip or br), inside the 2 ms budget.  The
detect row sits at the 50 MB/s target because every row of that listing
carries a ``data-order-id`` attribute, which the ``data-*`` scope must inspect in
Python; the default policy only ever stops at ``<input`` and raw-text elements.

Since 2026-11-25 the fast path runs in RE2's DFA (``guard.pii.skipdfa``).  The same
command, on the same VM that day (it ran about half as fast as for the table above:
``html.parser`` 5 MB/s, selectolax 70): default policy 40.6 / 188.5 / 327.1 MB/s,
detect 38.6 / 35.3 / 34.4, a 100 KB page in 0.54 ms (1.16-1.35 ms with a coding).
Against ``html.parser`` in the same run, the default policy went from 6x to 8x on the
form and from 12x to 38x on the large page, where the skip is most of the work.

The tree parsers (lxml, selectolax) reach the speed but cannot do the job: they
re-serialise the whole document (byte identity is lost: attribute quoting, case,
entities, whitespace,
the declared encoding), they need the whole page before the first byte goes
out, and their memory grows with the page.  ``html.parser`` streams but decodes
to ``str`` (a Shift_JIS page would be re-encoded) and is too slow.  lol_html is
the right design (a streaming rewriter written for this), but the available
Python binding (python-lolhtml 0.1, one maintainer) exposes no encoding
setting (UTF-8 only: a Shift_JIS value reaches Python as mojibake, so neither
full-width digits nor Japanese field names can match), rewrites only the first
of duplicated attributes (the later copies, and the PII in them, survive), and
would be a compiled runtime dependency from a young package for one feature.
The scanner here does what the job needs in Python: one DFA ``match`` (RE2,
``guard.pii.skipdfa``) skips every construct that cannot hold PII
(text, ordinary tags with their quoted attributes, comments, doctypes, raw-text
elements whose end tag is in the buffer), and the Python slow path runs only at the
tags the policy cares about, at ``<script>`` and at constructs cut by a chunk end.

Safety properties (each has a test)
-----------------------------------
* Any split of a body into chunks gives the same output as the unsplit body.
* ``<script>``/``<style>``/``<textarea>``/``<title>`` contents, comments and CDATA
  are never read as tags; ``<svg>``/``<math>`` content follows the foreign rules.
* A body in an encoding the scanner cannot read byte-wise (ISO-2022-JP,
  UTF-16) passes through unchanged and is reported (``unsupported-charset``).
* A start tag longer than ``max_tag_bytes`` passes through unchanged and is
  reported (``oversized-tag``); a body that ends inside a start tag still has
  that tag inspected (``eof-in-tag``, counted, like ``oversized-tag``, only for a
  tag the policy could change).
* A tokenizer callback that raises empties the value instead (fail closed).
"""

from __future__ import annotations

import re

from guard.pii import charset as charsets
from guard.pii.detect import RawScreen, raw_screen
from guard.pii.element import FieldTokenizer, TagPolicy, Tokenizer
from guard.pii.lexer import (
    ATTR_RE,
    BREAKOUT,
    COMMENT_END_RE,
    FOREIGN_ROOTS,
    PLAINTEXT,
    RAWTEXT,
    RCDATA,
    SCRIPT,
    SCRIPT_DATA_RE,
    SCRIPT_DOUBLE_RE,
    SCRIPT_ESCAPED_RE,
    SCRIPT_TAIL,
    TAG_NAME_RE,
    TAG_RE,
    WS,
    TagMachine,
    is_self_closing,
    raw_end_pattern,
)
from guard.pii.policy import Policy, Scope
from guard.pii.report import Report, Skip
from guard.pii.skipdfa import SkipDFA, skip_dfa

# Scanner states.
_DATA, _TAG, _END_TAG, _BOGUS, _COMMENT_START, _COMMENT, _CDATA, _RAW, _PLAINTEXT = range(9)
_SCRIPT, _SCRIPT_ESCAPED, _SCRIPT_DOUBLE = range(9, 12)
_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class HTMLRewriter:
    """Rewrites one HTML body.  Not thread-safe; one instance per response.

    ``charset`` is the ``Content-Type`` charset parameter, if any.  Without one,
    the first 1024 bytes are held until a ``<meta>`` declaration is looked for.
    ``field_tokenizer``, when given, is called instead of ``tokenizer_cb`` with a
    third argument saying where the value sits (``element.Where``), so a vault can
    bind each token to the form field it was issued for.
    """

    def __init__(
        self, policy: Policy, tokenizer_cb: Tokenizer | None = None, charset: str | None = None,
        *, field_tokenizer: FieldTokenizer | None = None,
    ) -> None:
        self.report = Report()
        self._tags = TagPolicy(policy, tokenizer_cb, self.report, field_tokenizer)
        self._declared = charset
        resolved = charsets.resolve(charset)
        # A usable declared charset only waits for a possible byte order mark.
        self._settle_at = 3 if resolved is not None else charsets.PRESCAN_BYTES
        self._settled = False
        self._passthrough = False
        self._pending = b""
        self._state = _DATA
        self._raw_end: re.Pattern[bytes] | None = None
        self._foreign = 0
        self._machine: TagMachine | None = None
        self._held: list[bytes] | None = None     # the start tag being read, when it is held
        self._held_len = 0
        self._max_tag = policy.max_tag_bytes
        self._skip, self._skip_foreign, self._attr_needle, self._input_needle, self._value_screen = _patterns(policy)
        self._elements = policy.interest.elements
        self._closed = False

    # -- public ------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        """The output for this chunk (possibly empty: bytes may be held until they can be judged)."""
        if self._closed:
            raise RuntimeError("HTMLRewriter.feed() after close()")
        if not chunk:
            return b""
        if self._passthrough:
            return bytes(chunk)
        if not self._settled:
            self._pending += chunk
            if len(self._pending) < self._settle_at:
                return b""
            self._settle()
            if self._passthrough:
                out, self._pending = self._pending, b""
                return out
            chunk, self._pending = self._pending, b""
        return self._run(bytes(chunk), final=False)

    def close(self) -> bytes:
        """The rest of the output; the body is complete."""
        if self._closed:
            return b""
        self._closed = True
        if not self._settled:
            self._settle()
        if self._passthrough:
            out, self._pending = self._pending, b""
            return out
        return self._run(b"", final=True)

    @property
    def codec(self) -> str | None:
        """The Python codec values are decoded with (None: UTF-8 when valid, else the fallback)."""
        return self._tags.codec

    # -- setup ---------------------------------------------------------------------

    def _settle(self) -> None:
        self._settled = True
        codec = charsets.choose(self._pending[: charsets.PRESCAN_BYTES], self._declared)
        if codec == charsets.UNSAFE:
            self._passthrough = True
            self.report.skipped[Skip.UNSUPPORTED_CHARSET] += 1
        else:
            self._tags.codec = codec

    # -- the scanner ---------------------------------------------------------------

    def _run(self, data: bytes, final: bool) -> bytes:
        buf = self._pending + data if self._pending else data
        self._pending = b""
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n:
            state = self._state
            if state == _DATA:
                skip = self._skip_foreign if self._foreign else self._skip
                end = skip.end(buf, pos)
                if end > pos:
                    out.append(buf[pos:end])
                    pos = end
                    if pos == n:
                        break
                new = self._open(buf, pos, out)
            elif state == _TAG or state == _END_TAG:
                new = self._continue_tag(buf, pos, out)
            elif state == _RAW:
                new = self._raw(buf, pos, out, final)
            elif state >= _SCRIPT:
                new = self._script(buf, pos, out, final)
            elif state == _COMMENT_START:
                new = self._comment_start(buf, pos, out, final)
            elif state == _COMMENT:
                new = self._until(buf, pos, out, COMMENT_END_RE, 3, final)
            elif state == _BOGUS:
                new = self._until(buf, pos, out, _GT, 0, final)
            elif state == _CDATA:
                new = self._until(buf, pos, out, _CDATA_END, 2, final)
            else:  # _PLAINTEXT
                out.append(buf[pos:])
                new = n
            if new == pos and self._state == state:
                break       # no progress: the rest waits for more bytes
            pos = new
        if pos < n:
            if final:
                out.append(buf[pos:])
            else:
                self._pending = buf[pos:]
        if final:
            self._finish(out)
        return b"".join(out)

    def _finish(self, out: list[bytes]) -> None:
        if self._held is not None:
            # The body ended inside a start tag: browsers drop it, but its source is
            # visible, so it is still inspected (with its last value unterminated).  Counted
            # only for a tag the policy could change, like an oversized one: a page cut
            # short in a <div> is no news about PII.
            tag = b"".join(self._held)
            self._held = None
            if self._wants_tag(tag):
                self.report.skipped[Skip.EOF_IN_TAG] += 1
                tag = self._tags.rewrite(tag, complete=False)
            out.append(tag)

    def _open(self, buf: bytes, pos: int, out: list[bytes]) -> int:
        """At a ``<`` the fast path left: what starts here?"""
        n = len(buf)
        if pos + 1 >= n:
            return pos
        c = buf[pos + 1]
        if c in _ALPHA:
            m = TAG_RE.match(buf, pos)
            if m is not None:
                self._start_tag(buf[pos : m.end()], out)
                return m.end()
            return self._begin_partial_tag(buf, pos, out, start=True)
        if c == 0x2F:  # '/'
            if pos + 2 >= n:
                return pos
            c2 = buf[pos + 2]
            if c2 in _ALPHA:
                m = TAG_RE.match(buf, pos)
                if m is not None:
                    out.append(buf[pos : m.end()])
                    name_m = TAG_NAME_RE.match(buf, pos)
                    self._end_tag(name_m.group(1).lower() if name_m else b"")
                    return m.end()
                return self._begin_partial_tag(buf, pos, out, start=False)
            if c2 == 0x3E:  # '</>' is ignored by browsers; it is still passed on
                out.append(b"</>")
                return pos + 3
            self._state = _BOGUS
            out.append(buf[pos : pos + 2])
            return pos + 2
        if c == 0x21:  # '!'
            head = buf[pos : pos + 9]
            if head.startswith(b"<!--"):
                out.append(b"<!--")
                self._state = _COMMENT_START
                return pos + 4
            if self._foreign and head == b"<![CDATA[":
                out.append(head)
                self._state = _CDATA
                return pos + 9
            maybe_cdata = self._foreign and b"<![CDATA[".startswith(head)
            if len(head) < 9 and (b"<!--".startswith(head) or maybe_cdata):
                return pos   # too few bytes to tell yet
            self._state = _BOGUS
            out.append(b"<!")
            return pos + 2
        if c == 0x3F:  # '?'
            self._state = _BOGUS
            out.append(b"<?")
            return pos + 2
        out.append(b"<")
        return pos + 1

    def _begin_partial_tag(self, buf: bytes, pos: int, out: list[bytes], start: bool) -> int:
        machine = TagMachine()
        self._machine = machine
        first = pos + (1 if start else 2)
        if start:
            self._state = _TAG
            self._held = [buf[pos:first]]
            self._held_len = first - pos
        else:
            self._state = _END_TAG
            out.append(buf[pos:first])
        return self._continue_tag(buf, first, out)

    def _continue_tag(self, buf: bytes, pos: int, out: list[bytes]) -> int:
        machine = self._machine
        if machine is None:
            raise RuntimeError("no tag in progress")
        end = machine.advance(buf, pos)
        stop = len(buf) if end is None else end
        held = self._held
        if held is None:
            out.append(buf[pos:stop])
        else:
            held.append(buf[pos:stop])
            self._held_len += stop - pos
            if self._held_len > self._max_tag:
                if self._wants_tag(b"".join(held)):
                    self.report.skipped[Skip.OVERSIZED_TAG] += 1
                out.extend(held)
                self._held = None
        if end is None:
            return stop
        was_start = self._state == _TAG
        self._machine = None
        self._state = _DATA
        if not was_start:
            self._end_tag(machine.name.lower())
        elif self._held is not None:
            tag = b"".join(self._held)
            self._held = None
            self._start_tag(tag, out)
        else:   # an oversized start tag, already passed on
            self._after_start(machine.name.lower(), b"")
        return end

    def _start_tag(self, tag: bytes, out: list[bytes]) -> None:
        name_m = TAG_NAME_RE.match(tag)
        name = name_m.group(1).lower() if name_m else b""
        if len(tag) > self._max_tag:
            if self._wants(name, tag):
                self.report.skipped[Skip.OVERSIZED_TAG] += 1
            out.append(tag)
        else:
            out.append(self._tags.rewrite(tag) if self._wants(name, tag) else tag)
        self._after_start(name, tag)

    def _wants(self, name: bytes, tag: bytes) -> bool:
        """Whether the policy could change this tag (a cheap test before parsing it)."""
        if name in self._elements:
            if name != b"input" or self._input_needle is None:
                return True
            if self._input_needle.search(tag) is None:
                return False
            return self._value_screen is None or self._value_screen.may_hold(tag)
        return self._attr_needle is not None and self._attr_needle.search(tag) is not None

    def _wants_tag(self, tag: bytes) -> bool:
        name_m = TAG_NAME_RE.match(tag)
        return self._wants(name_m.group(1).lower() if name_m else b"", tag)

    def _after_start(self, name: bytes, tag: bytes) -> None:
        if self._foreign:
            if name in BREAKOUT:
                self._foreign = 0
            elif name in FOREIGN_ROOTS and not _self_closing(tag):
                self._foreign += 1
            return
        if name in FOREIGN_ROOTS:
            if not _self_closing(tag):
                self._foreign = 1
        elif name == SCRIPT:
            self._state = _SCRIPT
        elif name in RAWTEXT or name in RCDATA:
            self._state = _RAW
            self._raw_end = raw_end_pattern(name)
        elif name == PLAINTEXT:
            self._state = _PLAINTEXT

    def _end_tag(self, name: bytes) -> None:
        if self._foreign:
            if name in FOREIGN_ROOTS:
                self._foreign -= 1
            elif name in (b"p", b"br"):
                self._foreign = 0

    # -- text-like states ------------------------------------------------------------

    def _raw(self, buf: bytes, pos: int, out: list[bytes], final: bool) -> int:
        pattern = self._raw_end
        if pattern is None:
            raise RuntimeError("raw text without an end pattern")
        m = pattern.search(buf, pos)
        if m is not None:
            out.append(buf[pos : m.start()])
            self._state = _DATA
            return m.start()
        return self._emit_all_but(buf, pos, out, 12, final)

    def _script(self, buf: bytes, pos: int, out: list[bytes], final: bool) -> int:
        state = self._state
        pattern = SCRIPT_DATA_RE if state == _SCRIPT else SCRIPT_ESCAPED_RE if state == _SCRIPT_ESCAPED \
            else SCRIPT_DOUBLE_RE
        m = pattern.search(buf, pos)
        if m is None:
            return self._emit_all_but(buf, pos, out, SCRIPT_TAIL, final)
        found = m.group()
        if found == b"<!--":
            # The dashes of '<!--' count towards '-->': '<!-->' opens and closes the escape.
            out.append(buf[pos : m.start() + 2])
            self._state = _SCRIPT_ESCAPED
            return m.start() + 2
        if found == b"-->":
            self._state = _SCRIPT
        elif found[1:2] == b"/":
            if state != _SCRIPT_DOUBLE:
                out.append(buf[pos : m.start()])
                self._state = _DATA
                return m.start()
            self._state = _SCRIPT_ESCAPED
        else:
            self._state = _SCRIPT_DOUBLE
        out.append(buf[pos : m.end()])
        return m.end()

    def _comment_start(self, buf: bytes, pos: int, out: list[bytes], final: bool) -> int:
        head = buf[pos : pos + 2]
        if head[:1] == b">":
            end = pos + 1
        elif head == b"->":
            end = pos + 2
        elif head == b"-" and not final:
            return pos
        else:
            self._state = _COMMENT
            return pos
        out.append(buf[pos:end])
        self._state = _DATA
        return end

    def _until(
        self, buf: bytes, pos: int, out: list[bytes], pattern: re.Pattern[bytes], keep: int, final: bool
    ) -> int:
        m = pattern.search(buf, pos)
        if m is None:
            return self._emit_all_but(buf, pos, out, keep, final)
        out.append(buf[pos : m.end()])
        self._state = _DATA
        return m.end()

    def _emit_all_but(self, buf: bytes, pos: int, out: list[bytes], keep: int, final: bool) -> int:
        """Emit what cannot be part of an end marker; keep the last ``keep`` bytes for the next chunk."""
        cut = len(buf) if final else max(pos, len(buf) - keep)
        out.append(buf[pos:cut])
        return cut


def untouched(policy: Policy, body: bytes, charset: str | None) -> bool:
    """Whether ``body``, a whole document, is certain to come out of an ``HTMLRewriter`` for
    ``policy`` unchanged and with nothing to report: then it can be sent as it is, unread.

    Why.  Under a policy that reads hidden inputs by what the detectors find (the shipped
    one), only an ``<input>`` that passes both needles can change, and most pages hold none:
    the DFA and the slow path would read every byte to change nothing.  Every start tag the
    scan could change begins with the bytes ``<input`` and is read by ``TAG_RE`` at that
    position, so testing every such position as if it were a tag (in a comment or a script
    it is not, which can only add candidates) decides for the scan.  Any doubt (a tag cut
    short, an oversized one, too many candidates, a charset the scan passes on with a
    report) answers False, and the scan runs as always.
    """
    _, _, _, needle, screen = _patterns(policy)
    if needle is None or screen is None:
        return False
    if charsets.choose(body[: charsets.PRESCAN_BYTES], charset) == charsets.UNSAFE:
        return False
    low = body.lower()
    pos = low.find(b"<input")
    seen = 0
    max_tag = policy.max_tag_bytes
    while pos >= 0:
        seen += 1
        m = TAG_RE.match(body, pos)
        if m is None or seen > _MAX_CANDIDATES:
            return False
        end = m.end()
        if end - pos > max_tag:
            return False
        # ``_input_needle`` ("hidden" in any case, or '&') read on the lowered copy: two
        # memchr-speed finds, where the case-blind regex tries every byte of the tag.
        if (low.find(b"hidden", pos, end) >= 0 or low.find(b"&", pos, end) >= 0) and screen.may_hold(body[pos:end]):
            return False
        # The next position, not the tag's end: a "tag" read from inside a comment may
        # swallow the start of a real one.
        pos = low.find(b"<input", pos + 6)
    return True


_GT = re.compile(rb">")
_MAX_CANDIDATES = 256
"""``untouched`` gives up past this many ``<input`` positions (each is matched on its own)."""

_CDATA_END = re.compile(rb"]]>")


def _self_closing(tag: bytes) -> bool:
    if not tag.endswith(b"/>"):
        return False
    last = 0
    name_m = TAG_NAME_RE.match(tag)
    for m in ATTR_RE.finditer(tag, name_m.end() if name_m else 0, len(tag) - 1):
        last = m.end()
    return is_self_closing(tag, last)


_Patterns = tuple[
    SkipDFA, SkipDFA, re.Pattern[bytes] | None, re.Pattern[bytes] | None, RawScreen | None
]
_PATTERNS: dict[int, tuple[Policy, _Patterns]] = {}


def _patterns(policy: Policy) -> _Patterns:
    """The scanner's patterns for ``policy``, built once per policy rather than once per response.

    Building them (pattern text, then ``re``'s own cache lookup) on every HTML response made
    a rewriter cost 16.7 us to create; with this, 5.6 us (measured in process, guard.yaml's
    policy).  Keyed by identity: a policy lives from one config load to the next; the entry
    holds it, so its id is not reused.
    """
    hit = _PATTERNS.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    needle = _input_needle(policy)
    plain = needle is not None    # the DFA passes on inputs that cannot be hidden, as the needle would
    made = (
        skip_dfa(policy.interest, False, plain), skip_dfa(policy.interest, True, plain),
        _attr_needle(policy), needle, _value_screen(policy) if needle is not None else None,
    )
    if len(_PATTERNS) >= 16:   # reloads: old policies go
        _PATTERNS.clear()
    _PATTERNS[id(policy)] = (policy, made)
    return made


def _input_needle(policy: Policy) -> re.Pattern[bytes] | None:
    """For a policy that reads only hidden inputs: what an ``<input>`` must contain to be parsed.

    Most inputs of a page (text, password, checkbox, submit) cannot be hidden, and parsing
    their attributes is most of the rewriter's cost on a form page.  A hidden input's
    ``type`` spells ``hidden`` in some case, or hides it behind a character reference
    (``&#104;idden``, which browsers decode): a tag with neither is passed on unparsed.
    None when the policy looks further (other inputs, ``data-*``, CSS selectors).
    """
    if policy.interest.attr_prefixes or any(s.css is not None for s in policy.selectors):
        return None
    scopes = frozenset().union(*(s.scopes for s in policy.selectors))
    # ``untouched`` reads the same needle with two finds: keep them in step.
    return re.compile(rb"hidden|&", re.IGNORECASE) if scopes <= {Scope.HIDDEN} else None


def _value_screen(policy: Policy) -> RawScreen | None:
    """For a policy that reads only hidden inputs by what detectors find: what a hidden input
    must contain for any selector to take its value (``detect.raw_screen``).

    On the benchmark's 8 KB page its three hidden fields (view state, CSRF token, return URL)
    were each decoded and run through every detector; a search of the tag's bytes now passes
    them on.  None when a selector takes values without a detector's say (no ``kinds``), or
    a detector it names has no screen (a custom pattern).
    """
    kinds: set[str] = set()
    for sel in policy.selectors:
        if sel.kinds is None:
            return None
        kinds |= sel.kinds
    return raw_screen(d for d in policy.detectors if d.kind in kinds)


def _attr_needle(policy: Policy) -> re.Pattern[bytes] | None:
    interest = policy.interest
    parts = [rb"[%s/'\"]%s" % (WS, re.escape(p)) for p in sorted(interest.attr_prefixes)]
    parts += [rb"[%s/'\"]%s(?=[%s/>=])" % (WS, re.escape(n), WS) for n in sorted(interest.attr_names)]
    return re.compile(b"|".join(parts), re.IGNORECASE) if parts else None
