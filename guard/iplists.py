"""Compiled, immutable IP sets for reputation lists, and the registry rules read them from.

Why this shape
--------------
A reputation list is up to millions of CIDRs (FireHOL level 1-4, Spamhaus DROP, Tor exits,
cloud ranges) and a rule asks one question per request: is this client on it?  The set is
compiled once per load into sorted, merged, disjoint ``[first, last]`` integer ranges, and a
lookup is a binary search (``bisect``, in C) over compact arrays:

* IPv4 bounds live in two ``array('I')`` (4 bytes each), IPv6 bounds in four ``array('Q')``
  (the high and low 64 bits of the first and last address; 32 bytes a range).  Python ints
  in lists would cost ~40 bytes per IPv4 bound and ~56 per IPv6 bound, which for 1M IPv6
  ranges alone is over 100 MB; arrays keep the measured 1M-CIDR set far under the 150 MB
  budget.  The price: ``bisect`` boxes each probed element into a short-lived int (about 20
  per lookup), cheap small-object allocations that do not outlive the call.
* Parsing uses ``socket.inet_pton`` + ``int.from_bytes``: it is strict (no leading zeros,
  no ``1.2.3`` shorthand, no whitespace, no Unicode digits) and on this machine costs
  ~0.11 us per IPv4 address against ~0.37 us for a hand ``split('.')`` + ``int`` (which also
  needs extra checks: ``int`` accepts ``"1_0"`` and non-ASCII digits) and ~2.3 us for
  ``ipaddress.ip_network``, which alone would eat half the 5 s load budget for 1M lines.
* Not a library.  ``netaddr`` (already installed, pure Python) was measured here on 100k
  mixed CIDRs: 1.1 s to build its ``IPSet`` (so ~11 s for 1M) and ~37 us per lookup, both
  over budget; this module took 0.25 s and ~1.3 us on the same input.  A C trie such as
  ``pytricia`` (not measured: not installed) would be one more compiled dependency to build
  and ship, for a lookup that is already well inside its budget.
* ``bench/bench_iplists.py`` checks the budgets for 1M mixed CIDRs (lookup <= 10 us, memory
  <= 150 MB, parse + build <= 5 s); on the 2-core dev machine: ~1.6 us median lookup,
  ~70 MB peak RSS during the load (~16 MB retained), ~1.7 s load.

Address semantics follow ``guard.clientip``: an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``)
is looked up as IPv4, and a list entry inside ``::ffff:0:0/96`` is stored as IPv4.  A wider
IPv6 network that merely *contains* the mapped block (``::/8`` from a bogon list) does not
match IPv4 clients: otherwise one bogon line would put all of IPv4 on a block list.
"""

from __future__ import annotations

import io
import ipaddress
import socket
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

__all__ = [
    "IPSet",
    "NamedLists",
    "ParseProblem",
    "ParseResult",
    "parse_bytes",
    "parse_file",
    "parse_lines",
    "parse_text",
    "read_list",
]

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_M32 = (1 << 32) - 1
_M64 = (1 << 64) - 1
_M128 = (1 << 128) - 1
_MAPPED_LO = 0xFFFF << 32            # ::ffff:0.0.0.0
_MAPPED_HI = _MAPPED_LO | _M32       # ::ffff:255.255.255.255

# Host-part masks by prefix length: ``first = addr & ~host``, ``last = first | host``.
_HOST4 = tuple((1 << (32 - p)) - 1 for p in range(33))
_HOST6 = tuple((1 << (128 - p)) - 1 for p in range(129))
_NET4 = tuple(_M32 ^ h for h in _HOST4)
_NET6 = tuple(_M128 ^ h for h in _HOST6)

# 'I' is 4 bytes on every platform CPython supports; fall back to 'L' rather than truncate.
_U32 = "I" if array("I").itemsize >= 4 else "L"

# A problem keeps at most this much of the offending line: lists can be hostile input.
_MAX_PROBLEM_TEXT = 80


class ParseProblem(NamedTuple):
    """One bad line of a list file; the load goes on without it."""

    line: int
    text: str
    message: str

    def __str__(self) -> str:
        return f'line {self.line}: {self.message} (got "{self.text}")'


@lru_cache(maxsize=65536)
def _parse_addr(text: str) -> tuple[int, int, int] | None:
    """``(version, high 64 bits, low 64 bits)`` of an address, or None.

    Cached because every rule that names a list asks about the same client IP, and the
    cached tuple makes repeat lookups allocation-free.  Bounded, so address rotation only
    churns it.  Mapped IPv6 comes back as IPv4, the same key ``guard.clientip`` produces.
    """
    try:
        if ":" in text:
            n = int.from_bytes(socket.inet_pton(_AF_INET6, text), "big")
            if _MAPPED_LO <= n <= _MAPPED_HI:
                return (4, 0, n - _MAPPED_LO)
            return (6, n >> 64, n & _M64)
        return (4, 0, int.from_bytes(socket.inet_pton(_AF_INET, text), "big"))
    except (OSError, ValueError, TypeError):  # ValueError: embedded NUL
        return None


def _int_text(version: int, n: int) -> str:
    """``guard.clientip``'s canonical text (``ipaddress``'s); ``inet_ntop`` differs on ``::1.2.3.4``."""
    return str(ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n))


class IPSet:
    """An immutable set of IPv4 and IPv6 addresses, stored as merged ranges.

    Build it with :meth:`from_iterable`, :func:`parse_lines`, :func:`parse_text`,
    :func:`parse_bytes`, :func:`read_list`, or :meth:`union`; ``IPSet()`` is the empty set.
    ``len()`` is the number of merged ranges (what memory and lookup cost depend on), not
    of addresses.
    """

    __slots__ = ("_v4e", "_v4s", "_v6eh", "_v6el", "_v6sh", "_v6sl")

    def __init__(self) -> None:
        self._v4s = array(_U32)
        self._v4e = array(_U32)
        self._v6sh = array("Q")
        self._v6sl = array("Q")
        self._v6eh = array("Q")
        self._v6el = array("Q")

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def from_iterable(cls, entries: Iterable[str]) -> IPSet:
        """A set from addresses/CIDRs given in config: any bad entry is an error, not a warning.

        Raises ``ValueError`` naming the first bad entry; list *files* use :func:`parse_lines`,
        which skips bad lines and reports them.
        """
        result = parse_lines(entries, max_problems=1)
        if result.problems:
            p = result.problems[0]
            raise ValueError(f'{p.message} (got "{p.text}")')
        return result.ipset

    @classmethod
    def _build(cls, packed4: list[int], packed6: list[int]) -> IPSet:
        """Sort, merge and store ranges packed as ``first << width | last``.

        Packing each range into one int lets ``list.sort`` compare plain ints instead of
        tuples, several times faster on a million entries; after sorting, overlapping and
        adjacent ranges merge in one pass, so lookups need only the last start <= address.
        """
        self = cls()
        packed4.sort()
        s4, e4 = self._v4s, self._v4e
        cur_s, cur_e = -1, -2
        for p in packed4:
            s = p >> 32
            if s <= cur_e + 1:
                e = p & _M32
                if e > cur_e:
                    cur_e = e
            else:
                if cur_s >= 0:
                    s4.append(cur_s)
                    e4.append(cur_e)
                cur_s, cur_e = s, p & _M32
        if cur_s >= 0:
            s4.append(cur_s)
            e4.append(cur_e)

        packed6.sort()
        sh, sl, eh, el = self._v6sh, self._v6sl, self._v6eh, self._v6el
        cur_s, cur_e = -1, -2
        for p in packed6:
            s = p >> 128
            if s <= cur_e + 1:
                e = p & _M128
                if e > cur_e:
                    cur_e = e
            else:
                if cur_s >= 0:
                    sh.append(cur_s >> 64)
                    sl.append(cur_s & _M64)
                    eh.append(cur_e >> 64)
                    el.append(cur_e & _M64)
                cur_s, cur_e = s, p & _M128
        if cur_s >= 0:
            sh.append(cur_s >> 64)
            sl.append(cur_s & _M64)
            eh.append(cur_e >> 64)
            el.append(cur_e & _M64)
        return self

    def _packed(self) -> tuple[list[int], list[int]]:
        p4 = [s << 32 | e for s, e in zip(self._v4s, self._v4e, strict=True)]
        p6 = [
            ((sh << 64 | sl) << 128) | (eh << 64 | el)
            for sh, sl, eh, el in zip(self._v6sh, self._v6sl, self._v6eh, self._v6el, strict=True)
        ]
        return p4, p6

    def union(self, *others: IPSet) -> IPSet:
        """A new set holding every address of this set and of ``others`` (e.g. allow-list parts)."""
        p4, p6 = self._packed()
        for other in others:
            o4, o6 = other._packed()
            p4.extend(o4)
            p6.extend(o6)
        return IPSet._build(p4, p6)

    # ---- queries --------------------------------------------------------------------------------

    def contains(self, ip: str) -> bool:
        """Is the address (canonical text, as ``guard.clientip`` gives it) in the set?

        Not-an-address is False: the caller resolved the client IP already, and a rule
        must not fire on garbage.  This is the per-request path, so it is written flat.
        """
        a = _parse_addr(ip)
        if a is None:
            return False
        if a[0] == 4:
            n = a[2]
            i = bisect_right(self._v4s, n)
            return i > 0 and n <= self._v4e[i - 1]
        i = self._find6(a[1], a[2])
        if i < 0:
            return False
        eh = self._v6eh[i]
        return eh > a[1] or (eh == a[1] and self._v6el[i] >= a[2])

    __contains__ = contains

    def _find6(self, h: int, lo: int) -> int:
        """Index of the last range starting at or before ``(h, lo)``, or -1.

        Starts are compared as (high, low) pairs: ``[k, j)`` is the run whose high word
        equals ``h``; inside it the low words are sorted, and before it every start is lower.
        """
        sh = self._v6sh
        j = bisect_right(sh, h)
        k = bisect_left(sh, h, 0, j)
        return bisect_right(self._v6sl, lo, k, j) - 1

    def lookup(self, ip: str) -> tuple[str, str] | None:
        """The merged range ``(first, last)`` holding the address, or None.

        For decision logs and ``guard`` tooling ("why did this IP match?").  Ranges are
        merged, so this is the covering range, not necessarily the original list line.
        """
        a = _parse_addr(ip)
        if a is None:
            return None
        if a[0] == 4:
            n = a[2]
            i = bisect_right(self._v4s, n) - 1
            if i >= 0 and n <= self._v4e[i]:
                return (_int_text(4, self._v4s[i]), _int_text(4, self._v4e[i]))
            return None
        n = a[1] << 64 | a[2]
        i = self._find6(a[1], a[2])
        if i >= 0 and n <= (self._v6eh[i] << 64 | self._v6el[i]):
            return (
                _int_text(6, self._v6sh[i] << 64 | self._v6sl[i]),
                _int_text(6, self._v6eh[i] << 64 | self._v6el[i]),
            )
        return None

    def ranges(self) -> Iterator[tuple[str, str]]:
        """Every merged range as ``(first, last)`` text, IPv4 first, each family ascending."""
        for s, e in zip(self._v4s, self._v4e, strict=True):
            yield (_int_text(4, s), _int_text(4, e))
        for sh, sl, eh, el in zip(self._v6sh, self._v6sl, self._v6eh, self._v6el, strict=True):
            yield (_int_text(6, sh << 64 | sl), _int_text(6, eh << 64 | el))

    @property
    def ranges_v4(self) -> int:
        return len(self._v4s)

    @property
    def ranges_v6(self) -> int:
        return len(self._v6sh)

    def __len__(self) -> int:
        return len(self._v4s) + len(self._v6sh)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IPSet):
            return NotImplemented
        return (
            self._v4s == other._v4s
            and self._v4e == other._v4e
            and self._v6sh == other._v6sh
            and self._v6sl == other._v6sl
            and self._v6eh == other._v6eh
            and self._v6el == other._v6el
        )

    __hash__ = None  # type: ignore[assignment]  # equal by value, but arrays are not hashable

    def __repr__(self) -> str:
        return f"<IPSet {self.ranges_v4} IPv4 ranges, {self.ranges_v6} IPv6 ranges>"


# ---- list files -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParseResult:
    """What a list file yielded: the set, how many lines were entries or bad, and the first problems.

    ``bad`` counts every bad line; ``problems`` keeps only the first ``max_problems`` so a
    garbage download cannot grow memory by one object per line.
    """

    ipset: IPSet
    entries: int
    bad: int
    problems: tuple[ParseProblem, ...]

    @property
    def bad_ratio(self) -> float:
        total = self.entries + self.bad
        return self.bad / total if total else 0.0


def parse_lines(lines: Iterable[str], *, max_problems: int = 100) -> ParseResult:
    """Parse list lines: one address or CIDR each, ``#``/``;`` comments, blanks ignored.

    Understands FireHOL ``.netset``/``.ipset``, Spamhaus DROP (``1.2.3.0/24 ; SBL123``) and
    plain one-per-line files.  Host bits are cleared (``10.0.0.1/8`` is ``10.0.0.0/8``),
    as every list publisher's tooling does.  Anything else on a line (a second field, a
    range ``a-b``, a netmask) is reported, not guessed at: a misread format should show up
    as problems, not as silently wrong ranges.
    """
    packed4: list[int] = []
    packed6: list[int] = []
    problems: list[ParseProblem] = []
    entries = bad = 0
    add4, add6 = packed4.append, packed6.append
    pton, from_bytes = socket.inet_pton, int.from_bytes
    host4, net4, host6, net6 = _HOST4, _NET4, _HOST6, _NET6
    for lineno, raw in enumerate(lines, 1):
        line = raw
        c = line.find("#")
        if c >= 0:
            line = line[:c]
        c = line.find(";")
        if c >= 0:
            line = line[:c]
        line = line.strip()
        if not line:
            continue
        addr, slash, plen = line.partition("/")
        message = ""
        try:
            if ":" in addr:
                n = from_bytes(pton(_AF_INET6, addr), "big")
                p = 128
                if slash:
                    p = int(plen) if plen.isdigit() and plen.isascii() and len(plen) <= 3 else -1
                    if not 0 <= p <= 128:
                        message = "prefix length must be 0-128 for IPv6"
                if not message:
                    s = n & net6[p]
                    e = s | host6[p]
                    if _MAPPED_LO <= s and e <= _MAPPED_HI:
                        add4((s - _MAPPED_LO) << 32 | (e - _MAPPED_LO))
                    else:
                        add6(s << 128 | e)
            else:
                n = from_bytes(pton(_AF_INET, addr), "big")
                p = 32
                if slash:
                    p = int(plen) if plen.isdigit() and plen.isascii() and len(plen) <= 2 else -1
                    if not 0 <= p <= 32:
                        message = "prefix length must be 0-32 for IPv4"
                if not message:
                    s = n & net4[p]
                    add4(s << 32 | (s | host4[p]))
        except (OSError, ValueError):  # ValueError: embedded NUL
            message = "not an IP address or CIDR"
        if message:
            bad += 1
            if len(problems) < max_problems:
                problems.append(ParseProblem(lineno, line[:_MAX_PROBLEM_TEXT], message))
        else:
            entries += 1
    return ParseResult(IPSet._build(packed4, packed6), entries, bad, tuple(problems))


def parse_text(text: str, *, max_problems: int = 100) -> ParseResult:
    return parse_lines(text.splitlines(), max_problems=max_problems)


def parse_bytes(data: bytes, *, max_problems: int = 100) -> ParseResult:
    """Parse a downloaded list, decoding the way :func:`read_list` does.

    Streams lines out of the buffer instead of ``decode().splitlines()``, which would hold
    a second and third copy of a 64 MiB body (the string and a list of a million lines).
    """
    with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="replace") as f:
        return parse_lines(f, max_problems=max_problems)


def read_list(path: Path, *, max_problems: int = 100) -> ParseResult:
    """Parse a list file, with counts for deciding whether to trust it.  Blocking: use a thread.

    Undecodable bytes become U+FFFD and so bad lines, never an exception; a UTF-8 BOM is
    dropped; lines are streamed, so a big file is not held in memory twice.
    """
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        return parse_lines(f, max_problems=max_problems)


def parse_file(path: Path, *, max_problems: int = 100) -> tuple[IPSet, list[ParseProblem]]:
    """The set and the (first ``max_problems``) bad lines of a list file: what a config load reports."""
    result = read_list(path, max_problems=max_problems)
    return result.ipset, list(result.problems)


# ---- the registry ---------------------------------------------------------------------------------


class NamedLists:
    """Name -> IPSet, as rules see them.  Swaps are copy-on-write.

    A reload builds the new set off to the side and replaces one reference, so a request
    sees the old set or the new one, never a half-built one, and a request that takes a
    :meth:`snapshot` sees one consistent generation of every list.
    """

    __slots__ = ("_sets",)

    def __init__(self, sets: Mapping[str, IPSet] | None = None) -> None:
        self._sets: Mapping[str, IPSet] = MappingProxyType(dict(sets or {}))

    def get(self, name: str) -> IPSet | None:
        return self._sets.get(name)

    def __getitem__(self, name: str) -> IPSet:
        return self._sets[name]

    def __contains__(self, name: object) -> bool:
        return name in self._sets

    def __len__(self) -> int:
        return len(self._sets)

    def names(self) -> frozenset[str]:
        return frozenset(self._sets)

    def snapshot(self) -> Mapping[str, IPSet]:
        """A read-only view that later swaps do not change."""
        return self._sets

    def set(self, name: str, ipset: IPSet) -> IPSet | None:
        """Install ``ipset`` under ``name`` in one swap; returns the set it replaced."""
        new = dict(self._sets)
        old = new.get(name)
        new[name] = ipset
        self._sets = MappingProxyType(new)
        return old

    def remove(self, name: str) -> IPSet | None:
        new = dict(self._sets)
        old = new.pop(name, None)
        self._sets = MappingProxyType(new)
        return old

    def replace(self, sets: Mapping[str, IPSet]) -> None:
        """Install a whole new generation (a config reload that adds or drops lists)."""
        self._sets = MappingProxyType(dict(sets))

    def __repr__(self) -> str:
        return f"<NamedLists {sorted(self._sets)}>"
