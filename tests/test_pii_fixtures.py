"""Real-world page fixtures (tests/fixtures/html): what goes, what stays, and byte identity around it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from guard.pii.policy import Mode, Policy, Selector, default_policy
from tests.test_pii_support import Vault, rewrite

FIXTURES = Path(__file__).parent / "fixtures" / "html"
HIDDEN_TAG = re.compile(rb"<input[^>]*hidden[^>]*>", re.IGNORECASE)


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_contact_form_in_a_table() -> None:
    page = load("contact_form_table.html")
    vault = Vault()
    out, rw = rewrite(default_policy(), page, charset=None, chunk=64, vault=vault)
    gone = [b"090-1234-5678", b"U4af4980629c2e7f5f6ae1e1cb8d9b3e7", b"'taro.yamada@example.co.jp'",
            b"&#64;example"]
    for secret in gone:
        assert secret not in out, secret
    assert sorted(v[1] for v in vault.values.values()) == ["email", "email", "phone", "user_id"]
    assert sorted(v[2] for v in vault.values.values())[0] == "090-1234-5678"
    assert "taro.yamada@example.co.jp" in {v[2] for v in vault.values.values()}   # entity-decoded
    assert rw.report.actions == {
        ("phone", "tokenize"): 1, ("user_id", "tokenize"): 1, ("email", "tokenize"): 2}
    # Not tags: the script's string, the comment, the title and the textarea are untouched.
    for kept in (b"""var row = '<input type="hidden" name="tel" value="' + tel + '">';""",
                 b'<!-- debug: <input type="hidden" name="debug_mail" value="debug@example.com"> -->',
                 b"<input type=hidden value=not-a-tag></TITLE>", b"<input type=hidden value=also-not-a-tag>",
                 b"<input type=hidden name=csrf value=9f2c1e77aa0b4d2e8c61>",
                 b"<input type=hidden name=lang value=ja>"):
        assert kept in out, kept
    # Outside the rewritten hidden inputs, every byte is the upstream's.
    assert HIDDEN_TAG.sub(b"", out) == HIDDEN_TAG.sub(b"", page)
    # The duplicate value attribute is gone with the first.
    assert out.count(b"name='mail' value=") == 1 and b"'mail' value=\"pii_" in out


@pytest.mark.parametrize(
    ("name", "codec"), [("shift_jis_form.html", "cp932"), ("euc_jp_form.html", "euc_jp")]
)
def test_japanese_legacy_encodings(name: str, codec: str) -> None:
    page = load(name)
    vault = Vault()
    out, rw = rewrite(default_policy(), page, charset=None, chunk=7, vault=vault)
    assert rw.codec == codec
    assert sorted(v[1] for v in vault.values.values()) == ["email", "phone", "user_id"]
    restored = out
    for token, (_, _, value) in vault.values.items():
        restored = restored.replace(token.encode(), value.encode(codec))
    assert restored == page, "only the three values changed, byte for byte"
    assert "ソ表能十".encode(codec) in out


def test_japanese_page_with_header_charset_only() -> None:
    page = load("shift_jis_form.html").replace(b"; charset=Shift_JIS", b"")
    vault = Vault()
    _, rw = rewrite(default_policy(), page, charset="Shift_JIS", vault=vault)
    assert rw.codec == "cp932" and len(vault.values) == 3


def test_foreign_content_templates_and_noscript() -> None:
    page = load("svg_templates.html")
    vault = Vault()
    out, _ = rewrite(default_policy(), page, charset=None, vault=vault)
    assert sorted(v[2] for v in vault.values.values()) == [
        "+81 3 1234 5678", "03-9876-5432", "U0123456789abcdef0123456789abcdef", "after.svg@example.com"]
    assert b'<![CDATA[ <input type="hidden" value="cdata@example.com"> ]]>' in out   # text inside SVG


def test_page_with_nothing_to_change_is_identical() -> None:
    page = load("no_pii.html")
    for pol in (default_policy(), Policy(selectors=(Selector(Mode.DETECT),))):
        out, rw = rewrite(pol, page, charset=None, chunk=100)
        assert out == page
        assert not rw.report.changed
    _, rw = rewrite(default_policy(), page, charset=None)
    assert rw.report.found == {} and rw.report.skipped == {}
