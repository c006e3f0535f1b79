"""guard.engine.usernames: one account, one key; the keys and fingerprints are keyed and stable."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.config import UsernameConfig
from guard.engine.usernames import (
    AliasError,
    Normalizer,
    load_aliases,
    parse_aliases,
    password_fingerprint,
    username_key,
)

SECRET = b"k" * 32


def fw(ascii_text: str) -> str:
    """The full-width form of ASCII text, as a Japanese IME types it."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in ascii_text)


def norm(raw: str, aliases: dict[str, str] | None = None, **kw: Any) -> str:
    return Normalizer(UsernameConfig.model_validate(kw), aliases).normalize(raw)


CORP = {"strip_domains": ["corp.example"]}

NORMALIZE_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    # (id, raw, settings, normalised)
    ("lower", "Alice", {}, "alice"),
    ("strip", "  alice \t", {}, "alice"),
    ("fold-inner-runs", "alice \t  smith", {}, "alice smith"),
    ("ideographic-space", "alice\u3000smith", {}, "alice smith"),
    ("nbsp", "alice\u00a0smith", {}, "alice smith"),
    ("full-width", fw("alice"), {}, "alice"),
    ("full-width-upper", fw("ALICE"), {}, "alice"),
    ("full-width-digits", fw("user123"), {}, "user123"),
    ("half-width-kana", "ｱﾘｽ", {}, "アリス"),
    ("ligature", "ﬁnn", {}, "finn"),
    ("sharp-s", "Straße", {}, "strasse"),
    ("final-sigma", "ΣΟΦΙΑ", {}, "σοφια"),
    ("kanji-unchanged", "山田太郎", {}, "山田太郎"),
    ("empty", "", {}, ""),
    ("only-space", "   ", {}, ""),
    ("unknown-user-same-rules", " NoSuchUser ", {}, "nosuchuser"),
    ("preserve-case", "Alice", {"case": "preserve"}, "Alice"),
    ("preserve-case-full-width", fw("ALICE"), {"case": "preserve"}, "ALICE"),
    ("no-strip", " Alice ", {"strip": False}, " alice "),
    ("no-nfkc", fw("ALICE"), {"nfkc": False}, fw("alice")),
    ("domain-stripped", "alice@corp.example", CORP, "alice"),
    ("domain-case", "Alice@CORP.Example", CORP, "alice"),
    ("domain-trailing-dot", "alice@corp.example.", CORP, "alice"),
    ("domain-full-width", fw("alice@corp.example"), CORP, "alice"),
    ("domain-other-kept", "alice@other.example", CORP, "alice@other.example"),
    ("domain-subdomain-kept", "alice@mail.corp.example", CORP, "alice@mail.corp.example"),
    ("domain-last-at", "a@b@corp.example", CORP, "a@b"),
    ("domain-empty-local-kept", "@corp.example", CORP, "@corp.example"),
    ("domain-config-spelling", "bob@corp.example", {"strip_domains": ["@Corp.Example."]}, "bob"),
    ("domain-preserve-case", "Alice@CORP.EXAMPLE", {**CORP, "case": "preserve"}, "Alice"),
    ("domain-several", "carol@b.example", {"strip_domains": ["a.example", "b.example"]}, "carol"),
]


@pytest.mark.parametrize(
    ("raw", "settings_", "expected"), [c[1:] for c in NORMALIZE_CASES], ids=[c[0] for c in NORMALIZE_CASES]
)
def test_normalize(raw: str, settings_: dict[str, Any], expected: str) -> None:
    assert norm(raw, **settings_) == expected


ALIASES = {
    "alice.smith@mail.example": "alice",
    "Bob": "Robert",
    "carol@corp.example": "CAROL2",
    "a": "b",
    "b": "c",
}

ALIAS_CASES: list[tuple[str, str, str]] = [
    ("email-alias", "ALICE.SMITH@mail.example", "alice"),
    ("case-folded-key-and-value", "bob", "robert"),
    ("spaces-and-full-width", fw(" BOB "), "robert"),
    ("key-domain-stripped-at-load", "carol", "carol2"),
    ("input-domain-stripped-first", "Carol@corp.example", "carol2"),
    ("canonical-unchanged", "robert", "robert"),
    ("not-transitive", "a", "b"),
    ("unknown-passes-through", "dave", "dave"),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in ALIAS_CASES], ids=[c[0] for c in ALIAS_CASES])
def test_aliases(raw: str, expected: str) -> None:
    assert norm(raw, ALIASES, **CORP) == expected


def test_aliases_conflicting_after_normalisation() -> None:
    with pytest.raises(ValueError, match="normalise to the same name"):
        Normalizer(UsernameConfig.model_validate({}), {"Alice": "x", "ALICE": "y"})


def test_aliases_agreeing_after_normalisation() -> None:
    n = Normalizer(UsernameConfig.model_validate({}), {"Alice": "X", "ALICE": "x"})
    assert n.normalize("alice") == "x"


# ---- alias files -------------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, str, dict[str, str]]] = [
    ("plain", "alice@mail.example,alice\nbob2,bob\n", {"alice@mail.example": "alice", "bob2": "bob"}),
    ("header", "alias,canonical\nx,y\n", {"x": "y"}),
    ("header-any-case-and-spaces", " Alias , Canonical \nx,y\n", {"x": "y"}),
    ("header-after-comment", "# aliases\nalias,canonical\nx,y\n", {"x": "y"}),
    ("header-only-first-row", "x,y\nalias,canonical\n", {"x": "y", "alias": "canonical"}),
    ("comments-blank-lines", "# c\n\n  # indented\nx,y\n\n", {"x": "y"}),
    ("spaces-trimmed", "  x ,  y  \n", {"x": "y"}),
    ("quoted-comma", '"smith, j",jsmith\n', {"smith, j": "jsmith"}),
    ("crlf", "x,y\r\nz,w\r\n", {"x": "y", "z": "w"}),
    ("repeat-same", "x,y\nx,y\n", {"x": "y"}),
    ("non-ascii", "山田,yamada\n", {"山田": "yamada"}),
    ("empty", "", {}),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_parse_aliases(text: str, expected: dict[str, str]) -> None:
    assert parse_aliases(text) == expected


ERROR_CASES: list[tuple[str, str, int, str]] = [
    ("one-field", "# c\nx,y\nsecretname\n", 3, "expected 2 fields"),
    ("three-fields", "x,y,z\n", 1, "got 3"),
    ("empty-canonical", "x,y\n\nsecretname,\n", 3, "non-empty"),
    ("empty-alias", ",y\n", 1, "non-empty"),
    ("bad-quote", 'x,y\n"secretname,y\n', 2, "not a valid CSV line"),
    ("conflict", "secretname,a\n# c\nsecretname,b\n", 3, "line 1"),
]


@pytest.mark.parametrize(
    ("text", "line", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_parse_aliases_errors(text: str, line: int, message: str) -> None:
    with pytest.raises(AliasError) as exc:
        parse_aliases(text, "aliases.csv")
    assert exc.value.line == line
    assert str(exc.value).startswith(f"aliases.csv:{line}: ")
    assert message in str(exc.value)
    assert "secretname" not in str(exc.value)  # usernames are PII: never in error text


def test_load_aliases(tmp_path: Path) -> None:
    path = tmp_path / "aliases.csv"
    path.write_bytes(("\ufeffalias,canonical\n" + fw("alice") + "@corp.example,Alice\n").encode())
    aliases = load_aliases(path)
    assert aliases == {fw("alice") + "@corp.example": "Alice"}
    assert norm("alice@corp.example", aliases, **CORP) == "alice"


def test_load_aliases_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "aliases.csv"
    path.write_bytes(b"x,y\nz,w\n" + "山田,yamada\n".encode("cp932"))
    with pytest.raises(AliasError) as exc:
        load_aliases(path)
    assert exc.value.line == 3 and str(path) in str(exc.value)


# ---- keyed digests -----------------------------------------------------------------------------

def test_username_key_format_is_pinned() -> None:
    """Changing the construction would orphan every stored counter and ban: this pins it."""
    expected = hmac.new(SECRET, b"user\x00alice", hashlib.sha256).hexdigest()[:32]
    assert username_key(SECRET, "alice") == expected
    expected_pw = hmac.new(SECRET, b"password\x00hunter2", hashlib.sha256).hexdigest()[:32]
    assert password_fingerprint(SECRET, "hunter2") == expected_pw


@pytest.mark.parametrize("digest", [username_key, password_fingerprint])
def test_digests_stable_and_secret_dependent(digest: Any) -> None:
    a = digest(SECRET, "alice")
    assert a == digest(SECRET, "alice")
    assert len(a) == 32 and int(a, 16) >= 0
    assert a != digest(b"j" * 32, "alice")
    assert a != digest(SECRET, "alice ")
    assert "alice" not in a


def test_username_and_password_digests_are_separated() -> None:
    # A user whose password is their username must not show two equal digests in the store.
    assert username_key(SECRET, "alice") != password_fingerprint(SECRET, "alice")


def test_digests_accept_lone_surrogates() -> None:
    # JSON bodies may carry "\ud800"; that must not crash the request path.
    assert len(username_key(SECRET, "a\ud800")) == 32
    assert len(password_fingerprint(SECRET, "\udfff")) == 32


@pytest.mark.parametrize("secret", [b"", b"short"])
def test_short_secret_rejected(secret: bytes) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        username_key(secret, "alice")


def test_password_is_not_normalised() -> None:
    assert password_fingerprint(SECRET, fw("Pass")) != password_fingerprint(SECRET, "Pass")
    assert password_fingerprint(SECRET, "pass ") != password_fingerprint(SECRET, "pass")


# ---- properties --------------------------------------------------------------------------------

DEFAULT = Normalizer(UsernameConfig.model_validate({}))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_normalize_idempotent(raw: str) -> None:
    once = DEFAULT.normalize(raw)
    assert DEFAULT.normalize(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_full_width_counts_as_ascii(raw: str) -> None:
    """Any ASCII name typed on a full-width keyboard is the same account."""
    ascii_name = "".join(c for c in raw if "!" <= c <= "~")
    full_width = fw(ascii_name)
    assert DEFAULT.normalize(full_width) == DEFAULT.normalize(ascii_name)
