"""Fuzzing the two parsers that read attacker bytes whole: the login-body parser and the HTML rewriter.

Properties (each a hypothesis test):

* ``guard.engine.loginbody.extract`` never raises, whatever the Content-Type and
  body (near-valid form, multipart and JSON bodies mutated byte by byte, and raw
  bytes); its error is one of the documented codes; the password never shows in
  the result's ``repr`` or error.
* ``guard.pii.HTMLRewriter`` never raises on any bytes in any declared charset,
  gives the same output however the body is chunked, and no PII value that the
  detectors find (generated e-mail addresses, phone numbers and user ids, in
  UTF-8, Shift_JIS or EUC-JP, entity-encoded or not) is left in a hidden input
  as a browser would parse the output (checked with lexbor, a WHATWG parser).

Examples per property: ``GUARD_FUZZ_EXAMPLES`` (default 300, a few seconds).
For millions of inputs, run this module: it feeds each property random buffers
through hypothesis's ``fuzz_one_input`` (no shrinking, no database), e.g.
``.venv/bin/python -m tests.test_robust_fuzz 600`` (600 s per property) and
prints how many inputs ran.  ``tests/test_pii_props.py`` and
``tests/test_loginbody.py`` hold the older, narrower properties.
"""

from __future__ import annotations

import html
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.config import LoginEndpoint
from guard.engine.loginbody import FieldError, LoginFields, extract
from guard.pii.detect import builtin_detectors, kinds_in, normalize
from guard.pii.policy import default_policy
from guard.pii.rewriter import HTMLRewriter

EXAMPLES = int(os.environ.get("GUARD_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
CODES = {e.value for e in FieldError}
SECRET = "Pw-7c1e9f"  # a password no generated body contains by accident

# ---- the login-body parser -----------------------------------------------------------------------


def ep(**kw: Any) -> LoginEndpoint:
    return LoginEndpoint.model_validate({"id": "login", "path": "/login", **kw})


ENDPOINTS = [ep(), ep(username="/user/name", password="/pw"), ep(charset="shift_jis"),
             ep(username="ユーザー", password=None, charset="euc-jp"), ep(username="/a/0/~1b", password="/~0p")]
CONTENT_TYPES = [
    "", "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=shift_jis",
    "application/x-www-form-urlencoded; charset=utf-16", "application/x-www-form-urlencoded; charset=\"x\"",
    "multipart/form-data; boundary=b", 'multipart/form-data; boundary="a b"', "multipart/form-data",
    "multipart/form-data; boundary=" + "x" * 80, "application/json", "application/json; charset=euc-jp",
    "application/vnd.api+json", "text/plain", "application/json; charset=utf-32", "APPLICATION/JSON",
    "application/x-www-form-urlencoded;;charset=", "multipart/form-data; boundary=b; boundary=c",
]


@st.composite
def form_body(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(
        st.sampled_from(["username", "password", "user", "ユーザー", "_charset_", "x", ""]),
        st.one_of(st.text(max_size=12), st.just(SECRET)),
    ), max_size=6))
    sep = draw(st.sampled_from(["&", ";", "&&", "&amp;"]))
    quote = draw(st.sampled_from([lambda s: s, lambda s: s.replace(" ", "+"),
                                  lambda s: "".join(f"%{b:02X}" for b in s.encode("utf-8", "surrogatepass"))]))
    return sep.join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode("utf-8", "surrogatepass")


@st.composite
def multipart_body(draw: st.DrawFn) -> bytes:
    nl = draw(st.sampled_from([b"\r\n", b"\n"]))
    out = b""
    for name, value in draw(st.lists(st.tuples(st.sampled_from([b"username", b"password", b"u", b"_charset_"]),
                                               st.binary(max_size=12)), max_size=4)):
        out += b"--b" + nl + b'Content-Disposition: form-data; name="' + name + b'"' + nl + nl + value + nl
    if draw(st.booleans()):
        out += b"--b--" + nl
    return out


def json_value(depth: int = 3) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                  st.just(SECRET)),
        lambda kids: st.one_of(st.lists(kids, max_size=3),
                               st.dictionaries(st.sampled_from(["username", "user", "name", "pw", "password",
                                                                "a", "b", "~", "/"]), kids, max_size=4)),
        max_leaves=12,
    )


json_body = json_value().map(lambda v: __import__("json").dumps(v, ensure_ascii=False).encode("utf-8"))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A body with a few bytes flipped, inserted, removed, or cut short."""
    body = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, len(body)))
        if op == "flip" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif op == "insert":
            body[at:at] = draw(st.sampled_from([b"\x00", b"\xff", b"%", b"%G", b"\r\n", b"--b", b'"', b"{", b"[",
                                                b"\\u", b"\xe3\x81", b"=", b"&", b";"]))
        elif op == "delete":
            del body[at:at + draw(st.integers(1, 3))]
        elif op == "cut":
            del body[at:]
    return bytes(body)


bodies = st.one_of(mutated(form_body()), mutated(multipart_body()), mutated(json_body), st.binary(max_size=300))


@SETTINGS
@given(endpoint=st.sampled_from(ENDPOINTS), content_type=st.one_of(st.sampled_from(CONTENT_TYPES),
                                                                      st.text(max_size=40)), body=bodies)
def test_login_body_parser_never_raises(endpoint: LoginEndpoint, content_type: str, body: bytes) -> None:
    result = extract(endpoint, content_type, body)
    assert result.error is None or result.error in CODES
    assert result.username is not None or result.error is not None
    # the password adds nothing to the repr (a log line), and an error code never echoes input
    assert repr(result) == repr(LoginFields(result.username, None, result.error))
    if result.error is not None:
        assert SECRET not in result.error


# ---- the HTML rewriter -------------------------------------------------------------------------

LOCAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=12)
LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
emails = st.builds(lambda user, labels, tld: f"{user}@{'.'.join(labels)}.{tld}",
                   LOCAL, st.lists(LABEL, min_size=1, max_size=3), st.sampled_from(["jp", "com", "org", "co.jp"]))
# digits and hyphen as a Japanese page often writes them (U+FF10.., U+FF0D)
FULL_WIDTH = str.maketrans("0123456789-", "".join(chr(0xFF10 + i) for i in range(10)) + chr(0xFF0D))
DIGITS = st.text(alphabet="0123456789", min_size=4, max_size=4)
phones = st.one_of(
    st.builds(lambda a, b, c: f"0{a}0-{b}-{c}", st.sampled_from("789"), DIGITS, DIGITS),
    st.builds(lambda a, b, c: f"+81 {a}0 {b} {c}", st.sampled_from("789"), DIGITS, DIGITS),
    st.builds(lambda a, b: f"(03) {a}-{b}", DIGITS, DIGITS),
    st.builds(lambda a, b, c: f"0{a}0-{b}-{c}".translate(FULL_WIDTH), st.sampled_from("789"), DIGITS, DIGITS),
)
user_ids = st.text(alphabet="0123456789abcdefABCDEF", min_size=32, max_size=32).map(lambda h: "U" + h)
pii_values = st.one_of(emails, phones, user_ids)


@st.composite
def attr_value(draw: st.DrawFn, value: str) -> str:
    """``value`` as it may sit in an attribute: some characters as character references."""
    out = []
    for ch in value:
        how = draw(st.sampled_from(["plain"] * 6 + ["dec", "hex", "named"]))
        if how == "dec":
            out.append(f"&#{ord(ch)};")
        elif how == "hex":
            out.append(f"&#x{ord(ch):x};")
        elif how == "named" and ch in "@.+-":
            out.append({"@": "&commat;", ".": "&period;", "+": "&plus;", "-": "&hyphen;"}[ch])
        else:
            out.append(html.escape(ch, quote=True))
    return "".join(out)


@st.composite
def hidden_field(draw: st.DrawFn, value: str) -> str:
    case = draw(st.sampled_from([str.lower, str.upper]))
    quote = draw(st.sampled_from(['"{}"', "'{}'"]))
    attrs = [f"{case('type')}={quote.format(case('hidden'))}",
             f"{case('value')}={quote.format(draw(attr_value(value)))}",
             f"name={quote.format(draw(st.sampled_from(['mail', 'tel', 'id', 'x'])))}"]
    sep = draw(st.sampled_from([" ", "\n", "\t"]))
    return f"<{case('input')}{sep}{sep.join(draw(st.permutations(attrs)))}{draw(st.sampled_from(['>', '/>', ' >']))}"


FILLER = ["<p>", "</p>", "テキスト", " ", "\n", "&amp;", "<br/>", "<!-- c -->", "<form action=/x>", "</form>",
          "<div data-x=\"1\">", "</div>", "<script>var a='<input>';</script>", "<textarea>x</textarea>",
          "<input type=text name=q value=hello>", "<svg><title>t</title></svg>"]


@st.composite
def page(draw: st.DrawFn) -> tuple[str, list[str]]:
    values = draw(st.lists(pii_values, min_size=1, max_size=4))
    pieces = [draw(st.sampled_from(FILLER)) for _ in range(draw(st.integers(0, 8)))]
    for v in values:
        pieces.insert(draw(st.integers(0, len(pieces))), draw(hidden_field(v)))
    return "".join(pieces), values


def run(data: bytes, charset: str | None, cuts: list[int]) -> bytes:
    rw = HTMLRewriter(default_policy(), lambda kind, value: f"pii_{kind}_x", charset)
    out, prev = [], 0
    for c in [*sorted(set(cuts)), len(data)]:
        out.append(rw.feed(data[prev:c]))
        prev = c
    out.append(rw.close())
    return b"".join(out)


DETECTORS = builtin_detectors()


@SETTINGS
@given(doc=page(), charset=st.sampled_from(["utf-8", "shift_jis", "euc-jp"]), data=st.data())
def test_no_detected_pii_survives_in_a_hidden_field(doc: tuple[str, list[str]], charset: str,
                                                    data: st.DataObject) -> None:
    lexbor = pytest.importorskip("selectolax.lexbor")
    text, values = doc
    raw = text.encode(charset, "xmlcharrefreplace")   # what the charset cannot hold becomes &#NNNN;
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=6))
    out = run(raw, charset, cuts)
    assert out == run(raw, charset, [])   # chunking never matters
    detected = [normalize(v) for v in values if kinds_in(v, DETECTORS)]
    tree = lexbor.LexborHTMLParser(out.decode(charset, "replace"))
    for node in tree.css("input"):
        attrs = node.attributes
        if (attrs.get("type") or "").strip().lower() == "hidden":
            seen = normalize(attrs.get("value") or "")
            assert not any(v in seen for v in detected), (text, out)


@SETTINGS
@given(body=st.one_of(st.binary(max_size=400), page().map(lambda d: d[0].encode())),
       charset=st.sampled_from([None, "utf-8", "shift_jis", "euc-jp", "iso-2022-jp", "utf-16", "bogus", ""]),
       data=st.data())
def test_rewriter_never_raises_and_ignores_chunking(body: bytes, charset: str | None, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    assert run(body, charset, cuts) == run(body, charset, [])


# ---- drivers for long runs ----------------------------------------------------------------------

TARGETS: list[Callable[..., Any]] = [
    test_login_body_parser_never_raises,
    test_no_detected_pii_survives_in_a_hidden_field,
    test_rewriter_never_raises_and_ignores_chunking,
]


Failure = tuple[str, str, str]   # (target, input, exception)


def fuzz_properties(seconds: float, rng: random.Random, failures: list[Failure]) -> dict[str, int]:
    """Random buffers through each hypothesis property (``fuzz_one_input``) for ``seconds`` each."""
    counts: dict[str, int] = {}
    for target in TARGETS:
        one = target.hypothesis.fuzz_one_input  # type: ignore[attr-defined]
        ran = 0
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            for _ in range(100):
                buffer = rng.randbytes(rng.choice((256, 1024, 4096)))
                try:
                    if one(buffer) is not None:
                        ran += 1
                except Exception as exc:  # keep going: a long run reports every distinct failure
                    ran += 1
                    failures.append((target.__name__, buffer.hex(), repr(exc)[:300]))
        counts[f"property {target.__name__}"] = ran
    return counts


LOGIN_SEEDS = [
    b"username=alice&password=" + SECRET.encode(), b"user%5Bname%5D=a&pw=b", b"_charset_=shift_jis&username=%82%a0",
    b'{"username": "alice", "password": "' + SECRET.encode() + b'"}', b'{"user": {"name": [1, {"a": null}]}}',
    b'--b\r\nContent-Disposition: form-data; name="username"\r\n\r\nalice\r\n--b--\r\n',
    b'--b\nContent-Disposition: form-data; name="password"; filename="x"\nContent-Type: text/plain; '
    b'charset=shift_jis\n\n\x82\xa0\n--b--',
]
LOGIN_TOKENS = [b"&", b"=", b"%", b"%ZZ", b"%00", b"+", b";", b"--b", b"--b--", b"\r\n", b"\n", b'"', b"\\",
                b"{", b"}", b"[", b"]", b":", b",", b"\\u00", b"\\ud800", b"username", b"password", b"name=",
                b"Content-Disposition: form-data", b"\xff", b"\x00", b"\x82\xa0", b"\xef\xbb\xbf", b"NaN", b"1e999"]
HTML_TOKENS = [b"<input", b" type=hidden", b" TYPE='HIDDEN'", b" value=", b' value="', b"'", b'"', b">", b"/>",
               b"<!--", b"-->", b"<script>", b"</script>", b"<svg>", b"</svg>", b"<![CDATA[", b"]]>", b"<textarea>",
               b"</textarea>", b"&#64;", b"&commat;", b"@", b"hanako@example.jp", b"090-1234-5678",
               b"U0123456789abcdef0123456789abcdef", b"<meta charset=shift_jis>", b"\x1b$B", b"\x82\xa0",
               b"\x00", b"\xff", b"<", b"=", b" ", b"\n"]


def mutate(rng: random.Random, data: bytes, tokens: list[bytes], seeds: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        at = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(at, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[at:at] = rng.choice(tokens)
        elif op == 2:
            del buf[at:at + rng.randint(1, 16)]
        elif op == 3 and buf:
            end = min(len(buf), at + rng.randint(1, 64))
            buf[at:at] = buf[at:end]
        elif op == 4:
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            buf[at:at] = other[start:start + rng.randint(1, 128)]
        else:
            del buf[at:]
    return bytes(buf[:65536])


class FuzzFailure(AssertionError):
    """A check failed; the message holds the input, so a long run's report is a reproduction."""


def check_extract(rng: random.Random) -> None:
    body = mutate(rng, rng.choice(LOGIN_SEEDS), LOGIN_TOKENS, LOGIN_SEEDS)
    endpoint, content_type = rng.choice(ENDPOINTS), rng.choice(CONTENT_TYPES)
    try:
        result = extract(endpoint, content_type, body)
        assert result.error is None or result.error in CODES
        assert repr(result) == repr(LoginFields(result.username, None, result.error))
    except Exception as exc:
        raise FuzzFailure(f"{endpoint.username!r} {content_type!r} {body!r}: {exc!r}") from exc


def html_seeds() -> list[bytes]:
    from pathlib import Path

    seeds = [f.read_bytes() for f in sorted((Path(__file__).parent / "fixtures" / "html").glob("*.html"))]
    seeds.append(b'<form><input type="hidden" name="m" value="hanako@example.jp"></form>')
    return seeds


def check_rewriter(rng: random.Random, seeds: list[bytes]) -> None:
    body = mutate(rng, rng.choice(seeds), HTML_TOKENS, seeds)
    charset = rng.choice([None, "utf-8", "shift_jis", "euc-jp", "utf-16", "bogus"])
    cuts = [rng.randint(0, len(body)) for _ in range(rng.randint(0, 8))]
    try:
        assert run(body, charset, cuts) == run(body, charset, [])
    except Exception as exc:
        raise FuzzFailure(f"{charset!r} {cuts!r} {body!r}: {exc!r}") from exc


def fuzz_mutations(seconds: float, rng: random.Random, failures: list[Failure]) -> dict[str, int]:
    """A plain mutation fuzzer, much faster than hypothesis: the same invariants, checked directly."""
    seeds = html_seeds()
    checks: dict[str, Callable[[], None]] = {
        "mutation extract": lambda: check_extract(rng),
        "mutation HTMLRewriter": lambda: check_rewriter(rng, seeds),
    }
    counts = {}
    for name, check in checks.items():
        ran = 0
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            for _ in range(50):
                ran += 1
                try:
                    check()
                except FuzzFailure as exc:
                    failures.append((name, "", str(exc)[:2000]))
        counts[name] = ran
    return counts


def test_mutation_fuzzers_smoke() -> None:
    """The fast fuzzers' checks, a few hundred inputs with a fixed seed (the long runs use the driver)."""
    rng = random.Random(8)
    seeds = html_seeds()
    for _ in range(EXAMPLES * 3):
        check_extract(rng)
    for _ in range(EXAMPLES):
        check_rewriter(rng, seeds)


@pytest.mark.parametrize("page", [b'<meta charset="a\x00b"><input type=hidden value=a@b.jp>',
                                  b'<meta http-equiv=content-type content="text/html; charset=x\x00">'])
def test_nul_in_a_meta_charset_is_not_an_exception(page: bytes) -> None:
    """Found by the mutation fuzzer: codecs.lookup raises ValueError (not LookupError) on a NUL."""
    assert run(page, None, []) == run(page, None, [3, 9])


if __name__ == "__main__":
    # python -m tests.test_robust_fuzz [SECONDS_PER_TARGET] [SEED]
    per_target = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rng = random.Random(seed)
    found: list[Failure] = []
    totals = {**fuzz_mutations(per_target, rng, found), **fuzz_properties(per_target, rng, found)}
    for name, n in totals.items():
        print(f"{name}: {n} inputs", flush=True)
    for failure in found[:50]:
        print("FAILED", *failure, flush=True)
    print(f"total: {sum(totals.values())} inputs, {len(found)} failures "
          f"(seed {seed}, {per_target:g} s per target)", flush=True)
    sys.exit(1 if found else 0)
