"""The ``pii:`` section: defaults that protect, located errors, and the compiled policy."""

from __future__ import annotations

import pytest

from guard.config import load_config_text
from guard.pii.detect import EMAIL, PHONE, USER_ID
from guard.pii.policy import Mode, Scope
from guard.pii.rewriter import HTMLRewriter
from guard.pii.settings import PIIConfig, glob_matcher
from guard.yamlsource import SourceError


def load(pii: str) -> PIIConfig:
    return load_config_text(f"upstream: http://127.0.0.1:8000\npii:\n{pii}", env={}).pii


def test_an_operator_who_changes_nothing_is_protected() -> None:
    cfg = load_config_text("upstream: http://127.0.0.1:8000\n", env={}).pii
    assert cfg.enabled and cfg.mode is Mode.TOKENIZE and cfg.token_ttl == 3600 and not cfg.detect
    policy = cfg.to_policy()
    (sel,) = policy.selectors
    assert sel.mode is Mode.TOKENIZE and sel.scopes == {Scope.HIDDEN}
    assert sel.kinds == frozenset({EMAIL, PHONE, USER_ID}) and sel.names is None
    assert policy.tokenizes
    page = b'<input type="hidden" name="x1" value="090-1234-5678"><input name="q" value="090-1234-5678">'
    rw = HTMLRewriter(policy, lambda kind, value: "pii_" + "A" * 22, "utf-8")
    out = rw.feed(page) + rw.close()
    assert out.count(b"090-1234-5678") == 1     # the visible input is not the default's business


def test_the_shipped_guard_yaml_tokenizes() -> None:
    from pathlib import Path

    from guard.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "guard.yaml", env={}).pii
    assert cfg.enabled and cfg.mode is Mode.TOKENIZE and cfg.to_policy().tokenizes


def test_fields_come_first_then_the_default() -> None:
    cfg = load("""
  mode: mask
  mask: {keep_last: 4}
  scopes: [hidden, inputs]
  fields:
    - {names: [tel*], mode: remove}
    - {css: 'div[data-owner]', mode: tokenize}
    - {name_regex: ['^user_?id$'], kinds: [user_id], mode: detect}
  detectors:
    - {kind: member_no, pattern: 'M\\d{8}'}
""")
    policy = cfg.to_policy()
    assert [s.mode for s in policy.selectors] == [Mode.REMOVE, Mode.TOKENIZE, Mode.DETECT, Mode.MASK]
    assert policy.selectors[0].names is not None and policy.selectors[0].names.matches("TEL_home")
    assert policy.selectors[-1].kinds == frozenset({EMAIL, PHONE, USER_ID, "member_no"})
    assert policy.selectors[-1].scopes == {Scope.HIDDEN, Scope.INPUTS}
    assert policy.selectors[-1].mask.keep_last == 4


def test_detect_mode_rewrites_nothing() -> None:
    cfg = load("""
  detect: true
  fields: [{names: [phone], mode: remove}]
  json: [{pointer: /user/phone}]
""")
    policy = cfg.to_policy()
    assert all(s.mode is Mode.DETECT for s in policy.selectors)
    assert all(r.mode is Mode.DETECT for r in policy.json_rules)
    assert not policy.tokenizes


def test_empty_kinds_turns_the_default_rule_off() -> None:
    cfg = load("""
  kinds: []
  fields: [{names: [mid], mode: remove}]
""")
    assert len(cfg.to_policy().selectors) == 1


@pytest.mark.parametrize(("pii", "where", "message"), [
    ("  mode: hide\n", "3:3: pii.mode", "Input should be"),
    ("  nope: 1\n", "3:3: pii.nope", "unknown key"),
    ("  token_ttl: 10s\n", "3:3: pii.token_ttl", "greater than or equal to 60"),
    ("  max_tokens_per_page: 0\n", "3:3: pii.max_tokens_per_page", "greater than or equal to 1"),
    ("  scopes: [everywhere]\n", "3:12: pii.scopes[0]", "Input should be"),
    ("  fallback_charset: iso-2022-jp\n", "3:3: pii.fallback_charset", "not an ASCII-compatible"),
    ("  fields: [{mode: remove, css: 'form input'}]\n", "pii.fields[0].css", "combinators"),
    ("  fields: [{mode: remove, name_regex: ['(']}]\n", "pii.fields[0].name_regex[0]", "invalid regular"),
    ("  fields: [{mode: remove, kinds: [iban]}]\n", "pii", "fields[0].kinds: unknown detector kind"),
    ("  fields: [{mode: remove, css: 'div.x'}]\n", "pii.fields[0]", "selects no attribute"),
    ("  fields: [{mode: remove, kinds: []}]\n", "pii.fields[0]", "empty list"),
    ("  detectors: [{kind: phone, pattern: x}]\n", "pii.detectors[0]", "built-in"),
    ("  detectors: [{kind: m, pattern: 'a*'}]\n", "pii.detectors[0]", "empty string"),
    ("  detectors: [{kind: 'a b', pattern: x}]\n", "pii.detectors[0].kind", "should match pattern"),
    ("  json: [{pointer: user}]\n", "pii.json[0].pointer", "must start with '/'"),
    ("  paths: {include: [contact]}\n", "pii.paths.include[0]", "starts with '/'"),
    ("  kinds: []\n", "pii", "no fields or json rules"),
])
def test_errors_are_located(pii: str, where: str, message: str) -> None:
    with pytest.raises(SourceError) as info:
        load(pii)
    text = str(info.value)
    assert f"{where}: " in text and message in text, text


def test_path_globs() -> None:
    m = glob_matcher(("/contact*", "/account/*/edit"))
    assert m is not None
    assert m.match("/contact") and m.match("/contact/form") and m.match("/account/7/edit")
    assert not m.match("/about/contact")
    assert glob_matcher(()) is None


def test_frozen() -> None:
    cfg = PIIConfig()
    with pytest.raises(ValueError):
        cfg.enabled = False  # type: ignore[misc]
