"""IPSet parsing, lookups at range edges, merging, v4/v6 separation, and the NamedLists registry.

The property tests hold the compiled set to the obvious (slow) answer from ``ipaddress``.
"""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.iplists import (
    IPSet,
    NamedLists,
    ParseProblem,
    parse_bytes,
    parse_file,
    parse_lines,
    parse_text,
    read_list,
)

BAD_ADDR = "not an IP address or CIDR"
BAD_V4_PREFIX = "prefix length must be 0-32 for IPv4"
BAD_V6_PREFIX = "prefix length must be 0-128 for IPv6"


def ranges(s: IPSet) -> list[tuple[str, str]]:
    return list(s.ranges())


# ---- parsing: one line in, ranges or a problem out --------------------------------------------------

GOOD_LINES = [
    ("192.0.2.7", [("192.0.2.7", "192.0.2.7")]),
    ("192.0.2.7/32", [("192.0.2.7", "192.0.2.7")]),
    ("198.51.100.0/24 ; SBL123456", [("198.51.100.0", "198.51.100.255")]),      # Spamhaus DROP
    ("198.51.100.0/24;SBL1", [("198.51.100.0", "198.51.100.255")]),
    ("  10.0.0.1/8\t# host bits set", [("10.0.0.0", "10.255.255.255")]),      # network, not an error
    ("\t203.0.113.9 \r", [("203.0.113.9", "203.0.113.9")]),
    ("0.0.0.0/0", [("0.0.0.0", "255.255.255.255")]),
    ("2001:db8::/32", [("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")]),
    ("2001:DB8:0:0::1", [("2001:db8::1", "2001:db8::1")]),                    # case, uncompressed
    ("2001:db8::1234/64 # v6 host bits", [("2001:db8::", "2001:db8::ffff:ffff:ffff:ffff")]),
    ("::/0", [("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")]),
    ("::ffff:192.0.2.1", [("192.0.2.1", "192.0.2.1")]),                       # mapped -> IPv4
    ("::ffff:192.0.2.0/120", [("192.0.2.0", "192.0.2.255")]),
    ("::ffff:0:0/96", [("0.0.0.0", "255.255.255.255")]),
    ("::1.2.3.4", [("::102:304", "::102:304")]),                              # IPv4-compatible stays v6
]


@pytest.mark.parametrize(("line", "expected"), GOOD_LINES)
def test_good_line(line: str, expected: list[tuple[str, str]]) -> None:
    result = parse_lines([line])
    assert result.problems == ()
    assert (result.entries, result.bad) == (1, 0)
    assert ranges(result.ipset) == expected


SKIPPED_LINES = ["", "   ", "# FireHOL header", "; Spamhaus DROP List 2024/01/01", "  # indented", "\r"]


@pytest.mark.parametrize("line", SKIPPED_LINES)
def test_comment_and_blank_lines_are_neither_entries_nor_problems(line: str) -> None:
    result = parse_lines([line])
    assert (result.entries, result.bad, len(result.ipset)) == (0, 0, 0)


BAD_LINES = [
    ("1.2.3.4/33", BAD_V4_PREFIX),
    ("1.2.3.4/", BAD_V4_PREFIX),
    ("1.2.3.4/ 24", BAD_V4_PREFIX),
    ("1.2.3.4/+8", BAD_V4_PREFIX),
    ("1.2.3.4/0x8", BAD_V4_PREFIX),
    ("1.2.3.4/\u0668", BAD_V4_PREFIX),                # a non-ASCII digit is still not a prefix
    ("1.2.3.0/255.255.255.0", BAD_V4_PREFIX),         # netmask notation is not guessed at
    ("1.2.3.0/24/8", BAD_V4_PREFIX),
    ("2001:db8::/129", BAD_V6_PREFIX),
    ("2001:db8::/-1", BAD_V6_PREFIX),
    ("1.2.3", BAD_ADDR),                              # inet_aton shorthand
    ("01.2.3.4", BAD_ADDR),                           # leading zero: octal to some parsers
    ("1.2.3.256", BAD_ADDR),
    ("1.2.3.4 1.2.3.9", BAD_ADDR),                    # a second field: another format, not ours
    ("1.2.3.4-1.2.3.9", BAD_ADDR),
    ("\u0661.\u0662.\u0663.\u0664", BAD_ADDR),     # Arabic-Indic digits
    ("fe80::1%eth0", BAD_ADDR),
    ("[2001:db8::1]", BAD_ADDR),
    ("1::2::3", BAD_ADDR),
    ("<html><body>rate limited</body></html>", BAD_ADDR),
    ("1.2.3.4\x00", BAD_ADDR),
    ("example.com", BAD_ADDR),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_bad_line(line: str, message: str) -> None:
    result = parse_lines(["192.0.2.1", line])
    assert (result.entries, result.bad) == (1, 1)
    assert result.problems == (ParseProblem(2, line.strip(), message),)
    assert ranges(result.ipset) == [("192.0.2.1", "192.0.2.1")]   # the good line still loads


FIREHOL = """\
#
# firehol_level1
# ipv4 hash:net ipset
#
0.0.0.0/8
1.10.16.0/20

; Spamhaus style
5.134.128.0/19 ; SBL270738
garbage here
192.0.2.0/24   # TEST-NET-1
2001:db8::/32
192.0.2.0/33
"""


def test_file_problems_carry_line_numbers_and_do_not_abort(tmp_path: Path) -> None:
    path = tmp_path / "level1.netset"
    path.write_bytes(b"\xef\xbb\xbf" + FIREHOL.encode() + b"\xff\xfe bytes\n")   # BOM, non-UTF-8 tail
    result = read_list(path)
    assert (result.entries, result.bad) == (5, 3)
    assert [(p.line, p.message) for p in result.problems] == [
        (10, BAD_ADDR), (13, BAD_V4_PREFIX), (14, BAD_ADDR),
    ]
    assert str(result.problems[0]) == 'line 10: not an IP address or CIDR (got "garbage here")'
    assert result.ipset.contains("1.10.31.255") and not result.ipset.contains("1.10.32.0")
    assert result.ipset.contains("2001:db8:ffff::1")
    assert result.bad_ratio == pytest.approx(3 / 8)
    # the same text through every entry point gives the same set
    ipset, problems = parse_file(path)
    assert ipset == result.ipset and problems == list(result.problems)
    assert parse_bytes(path.read_bytes()).ipset == result.ipset
    assert parse_text(path.read_text("utf-8-sig", errors="replace")).ipset == result.ipset


def test_problem_list_is_capped_but_bad_lines_are_all_counted() -> None:
    result = parse_lines(["x"] * 1000, max_problems=10)
    assert result.bad == 1000 and len(result.problems) == 10
    assert result.entries == 0 and result.bad_ratio == 1.0


def test_problem_text_is_truncated() -> None:
    result = parse_lines(["x" * 10_000])
    assert len(result.problems[0].text) == 80


def test_from_iterable_is_strict() -> None:
    assert IPSet.from_iterable(["10.0.0.0/8", "2001:db8::/32"]).contains("10.1.2.3")
    with pytest.raises(ValueError, match=r'prefix length must be 0-32 for IPv4 \(got "10.0.0.0/40"\)'):
        IPSet.from_iterable(["10.0.0.0/8", "10.0.0.0/40"])


# ---- lookups at the edges of ranges -------------------------------------------------------------

EDGES_V4 = IPSet.from_iterable(["10.0.0.0/24", "10.0.2.0/24", "0.0.0.0/32", "255.255.255.255"])


@pytest.mark.parametrize(
    ("ip", "hit"),
    [
        ("0.0.0.0", True), ("0.0.0.1", False),
        ("9.255.255.255", False), ("10.0.0.0", True), ("10.0.0.255", True), ("10.0.1.0", False),
        ("10.0.1.255", False), ("10.0.2.0", True), ("10.0.2.255", True), ("10.0.3.0", False),
        ("255.255.255.254", False), ("255.255.255.255", True),
        ("::ffff:10.0.2.255", True), ("::ffff:10.0.3.0", False),
    ],
)
def test_v4_edges(ip: str, hit: bool) -> None:
    assert EDGES_V4.contains(ip) is hit
    assert (ip in EDGES_V4) is hit
    assert (EDGES_V4.lookup(ip) is not None) is hit


# Two /120s that meet across the boundary between the high and low 64-bit words merge into one
# range whose first and last differ in the high word: the (high, low) search must get it right.
EDGES_V6 = IPSet.from_iterable([
    "2001:db8:0:0:ffff:ffff:ffff:ff00/120", "2001:db8:0:1::/120", "2001:db8:0:1::1000/116",
    "::/128", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
])


@pytest.mark.parametrize(
    ("ip", "hit"),
    [
        ("::", True), ("::1", False),
        ("2001:db8::ffff:ffff:ffff:feff", False), ("2001:db8::ffff:ffff:ffff:ff00", True),
        ("2001:db8::ffff:ffff:ffff:ffff", True), ("2001:db8:0:1::", True), ("2001:db8:0:1::ff", True),
        ("2001:db8:0:1::100", False), ("2001:db8:0:1::fff", False), ("2001:db8:0:1::1000", True),
        ("2001:db8:0:1::1fff", True), ("2001:db8:0:1::2000", False),
        ("2001:db8:0:2::", False), ("2001:db8:0:0:ffff:ffff:ffff:0", False),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", False), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ],
)
def test_v6_edges(ip: str, hit: bool) -> None:
    assert EDGES_V6.contains(ip) is hit
    assert (EDGES_V6.lookup(ip) is not None) is hit


def test_lookup_names_the_covering_range() -> None:
    assert EDGES_V6.lookup("2001:db8:0:1::7") == ("2001:db8::ffff:ffff:ffff:ff00", "2001:db8:0:1::ff")
    assert EDGES_V4.lookup("::ffff:10.0.0.7") == ("10.0.0.0", "10.0.0.255")
    assert EDGES_V4.lookup("10.0.1.0") is None


@pytest.mark.parametrize("junk", ["", "nope", "10.0.0.1:80", "[::]", "10.0.0.1 ", "::%eth0", "10.0.0.1\x00"])
def test_not_an_address_is_never_a_hit(junk: str) -> None:
    everything = IPSet.from_iterable(["0.0.0.0/0", "::/0"])
    assert everything.contains(junk) is False
    assert everything.lookup(junk) is None


def test_empty_set() -> None:
    empty = IPSet()
    assert len(empty) == 0 and not empty
    assert not empty.contains("10.0.0.1") and not empty.contains("::1")
    assert empty == IPSet.from_iterable([])


# ---- merging --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["10.0.0.0/25", "10.0.0.128/25"], [("10.0.0.0", "10.0.0.255")]),                    # adjacent
        (["10.1.0.0/16", "10.0.0.0/8"], [("10.0.0.0", "10.255.255.255")]),                   # contained
        (["10.0.0.0/24", "10.0.0.128/24"], [("10.0.0.0", "10.0.0.255")]),                    # duplicate
        (["10.0.0.0/24", "10.0.2.0/24"], [("10.0.0.0", "10.0.0.255"), ("10.0.2.0", "10.0.2.255")]),
        (["1.1.1.3", "1.1.1.1", "1.1.1.2"], [("1.1.1.1", "1.1.1.3")]),                       # unsorted
        (["10.0.0.0/23", "10.0.1.0/24", "10.0.1.128/25", "10.0.2.0/24"], [("10.0.0.0", "10.0.2.255")]),
        (["0.0.0.0/1", "128.0.0.0/1"], [("0.0.0.0", "255.255.255.255")]),
        (["2001:db8:8000::/33", "2001:db8::/33"], [("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")]),
        (["192.0.2.0/25", "::ffff:192.0.2.128/121"], [("192.0.2.0", "192.0.2.255")]),        # mapped joins v4
    ],
)
def test_merge(entries: list[str], expected: list[tuple[str, str]]) -> None:
    s = IPSet.from_iterable(entries)
    assert ranges(s) == expected
    assert len(s) == len(expected)


def test_union_merges_across_sets() -> None:
    a = IPSet.from_iterable(["10.0.0.0/25", "2001:db8::/48"])
    b = IPSet.from_iterable(["10.0.0.128/25", "192.0.2.1", "2001:db8:1::/48"])
    u = a.union(b)
    assert ranges(u) == [
        ("10.0.0.0", "10.0.0.255"), ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::", "2001:db8:1:ffff:ffff:ffff:ffff:ffff"),
    ]
    assert (u.ranges_v4, u.ranges_v6) == (2, 1)
    assert ranges(a) == [("10.0.0.0", "10.0.0.127"), ("2001:db8::", "2001:db8:0:ffff:ffff:ffff:ffff:ffff")]
    assert a.union() == a and IPSet().union(a, IPSet()) == a


# ---- IPv4 and IPv6 stay apart -------------------------------------------------------------------


def test_v6_networks_never_match_v4_clients() -> None:
    # "::/8" is on IPv6 bogon lists and contains ::ffff:0:0/96; it must not block all of IPv4
    for net in ("::/0", "::/8", "::/64", "::/95"):
        s = IPSet.from_iterable([net])
        assert not s.contains("192.0.2.1") and not s.contains("::ffff:192.0.2.1"), net
        assert s.contains("::1"), net


def test_v4_networks_never_match_v6_clients() -> None:
    s = IPSet.from_iterable(["0.0.0.0/0"])
    assert s.contains("192.0.2.1") and s.contains("::ffff:192.0.2.1")
    assert not s.contains("::1") and not s.contains("::c000:201") and not s.contains("2001:db8::")


def test_mapped_clients_match_v4_entries_and_mapped_entries_match_v4_clients() -> None:
    assert IPSet.from_iterable(["192.0.2.0/24"]).contains("::ffff:192.0.2.9")
    assert IPSet.from_iterable(["::ffff:192.0.2.0/120"]).contains("192.0.2.9")
    assert not IPSet.from_iterable(["192.0.2.0/24"]).contains("::192.0.2.9")   # IPv4-compatible is v6


# ---- the registry ---------------------------------------------------------------------------------


def test_named_lists_swap_and_snapshot() -> None:
    one = IPSet.from_iterable(["10.0.0.0/8"])
    two = IPSet.from_iterable(["192.0.2.0/24"])
    lists = NamedLists({"tor": one})
    snap = lists.snapshot()
    assert lists.set("tor", two) is one
    assert lists.get("tor") is two and lists["tor"] is two
    assert snap["tor"] is one                       # a request's snapshot never changes under it
    assert lists.set("drop", one) is None
    assert lists.names() == {"tor", "drop"} and len(lists) == 2 and "drop" in lists
    assert lists.remove("drop") is one and lists.get("drop") is None
    lists.replace({"new": two})
    assert lists.names() == {"new"}
    with pytest.raises(TypeError):
        snap["x"] = one  # type: ignore[index]


# ---- properties: the compiled set agrees with ipaddress ------------------------------------------

V4_POOL = 0x0A000000                                    # 10.0.0.0/20: dense, so lists overlap
V6_POOL = (0x20010DB8 << 96) | (0xFFFFFFFF << 32) | 0xFFFFF000   # straddles the 64-bit word edge
MAPPED = 0xFFFF << 32

v4_ints = st.one_of(st.integers(0, 2**32 - 1), st.integers(V4_POOL, V4_POOL + 0xFFF))
v6_ints = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(V6_POOL, V6_POOL + 0x1FFF),
    st.integers(MAPPED + V4_POOL, MAPPED + V4_POOL + 0xFFF),         # mapped IPv4
    st.integers(0, 0x1FFF),                                          # near ::
)


@st.composite
def networks(draw: st.DrawFn) -> str:
    """A list line: an address with a prefix, host bits often set, in either family."""
    if draw(st.booleans()):
        addr = str(ipaddress.IPv4Address(draw(v4_ints)))
        plen = draw(st.one_of(st.integers(20, 32), st.integers(0, 32)))
    else:
        addr = str(ipaddress.IPv6Address(draw(v6_ints)))
        plen = draw(st.one_of(st.integers(100, 128), st.integers(0, 128)))
    return f"{addr}/{plen}" if draw(st.booleans()) or plen not in (32, 128) else addr


@st.composite
def addresses(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["v4", "v6", "mapped"]))
    if kind == "v4":
        return str(ipaddress.IPv4Address(draw(v4_ints)))
    if kind == "mapped":
        return f"::ffff:{ipaddress.IPv4Address(draw(v4_ints))}"
    return str(ipaddress.IPv6Address(draw(v6_ints)))


def naive_contains(entries: list[str], ip: str) -> bool:
    """Membership the slow, obvious way, with guard.clientip's unmapping of both sides."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for e in entries:
        net = ipaddress.ip_network(e, strict=False)
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        if net.version == addr.version and addr in net:
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(st.lists(networks(), max_size=40), st.lists(addresses(), min_size=1, max_size=30))
def test_contains_agrees_with_ipaddress(entries: list[str], ips: list[str]) -> None:
    s = IPSet.from_iterable(entries)
    for ip in ips:
        expected = naive_contains(entries, ip)
        assert s.contains(ip) is expected, (ip, entries)
        found = s.lookup(ip)
        assert (found is not None) is expected
        if found is not None:
            first, last = (ipaddress.ip_address(x) for x in found)
            addr = ipaddress.ip_address(ip)
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            assert first <= addr <= last  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(st.lists(networks(), max_size=40))
def test_ranges_are_sorted_disjoint_and_not_adjacent(entries: list[str]) -> None:
    s = IPSet.from_iterable(entries)
    by_family: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for first, last in s.ranges():
        a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
        assert a.version == b.version and int(a) <= int(b)
        by_family[a.version].append((int(a), int(b)))
    for rs in by_family.values():
        for (_, prev_last), (next_first, _) in itertools.pairwise(rs):
            assert next_first > prev_last + 1   # merged: a gap of at least one address
    assert len(s) == len(by_family[4]) + len(by_family[6])


@settings(max_examples=100, deadline=None)
@given(st.lists(networks(), max_size=20), st.lists(networks(), max_size=20),
       st.lists(addresses(), max_size=20))
def test_union_is_membership_or(a: list[str], b: list[str], ips: list[str]) -> None:
    sa, sb = IPSet.from_iterable(a), IPSet.from_iterable(b)
    u = sa.union(sb)
    assert u == IPSet.from_iterable(a + b)
    for ip in ips:
        assert u.contains(ip) is (sa.contains(ip) or sb.contains(ip))
