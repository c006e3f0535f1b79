"""JSON response fields by JSON pointer (RFC 6901, plus the ``*`` wildcard), with every mode."""

from __future__ import annotations

import json

import pytest

from guard.pii.json import rewrite_json
from guard.pii.mask import Mask
from guard.pii.policy import JSONRule, Mode, Policy, parse_pointer
from guard.pii.report import Report, Skip
from tests.test_pii_support import Vault

DOC = {
    "user": {"tel": "090-1234-5678", "mail": "taro@example.jp", "a/b": "U4af4980629c2e7f5f6ae1e1cb8d9b3e7",
             "age": 30, "n": 819012345678},
    "friends": [{"tel": "03-1234-5678"}, {"tel": "not a phone"}, {"name": "x"}],
}
BODY = json.dumps(DOC).encode()


def run(*rules: JSONRule, body: bytes = BODY, vault: Vault | None = None) -> tuple[object, Report]:
    report = Report()
    out = rewrite_json(body, Policy(json_rules=rules), (vault or Vault()).tokenize, report)
    return (json.loads(out) if out != body else None), report


@pytest.mark.parametrize(
    ("pointer", "tokens"),
    [("/a", ("a",)), ("/a~1b/~0c", ("a/b", "~c")), ("/", ("",)), ("/x/0/*", ("x", "0", "*"))],
)
def test_parse_pointer(pointer: str, tokens: tuple[str, ...]) -> None:
    assert parse_pointer(pointer) == tokens


@pytest.mark.parametrize("pointer", ["", "a", "/a~2"])
def test_bad_pointer(pointer: str) -> None:
    with pytest.raises(ValueError, match="JSON pointer"):
        parse_pointer(pointer)


def test_tokenize_escaped_key_and_wildcard() -> None:
    vault = Vault()
    doc, report = run(JSONRule("/user/a~1b", Mode.TOKENIZE), JSONRule("/friends/*/tel", Mode.TOKENIZE,
                                                                     kinds=frozenset({"phone"})), vault=vault)
    assert isinstance(doc, dict)
    assert doc["user"]["a/b"].startswith("pii_")
    assert doc["friends"][0]["tel"].startswith("pii_") and doc["friends"][1]["tel"] == "not a phone"
    assert report.actions == {("user_id", "tokenize"): 1, ("phone", "tokenize"): 1}
    originals = sorted(v[2] for v in vault.values.values())
    assert originals == ["03-1234-5678", "U4af4980629c2e7f5f6ae1e1cb8d9b3e7"]


def test_remove_and_mask() -> None:
    doc, _ = run(JSONRule("/user/mail", Mode.REMOVE), JSONRule("/friends/0", Mode.REMOVE),
                 JSONRule("/user/tel", Mode.MASK, mask=Mask(keep_last=4)), JSONRule("/user/n", Mode.MASK))
    # /friends/0 is an object: only scalars are treated
    assert isinstance(doc, dict) and "mail" not in doc["user"] and doc["user"]["tel"] == "***-****-5678"
    assert doc["user"]["n"] == "" and doc["friends"] == DOC["friends"]


def test_remove_in_array_writes_null() -> None:
    doc, _ = run(JSONRule("/x/1", Mode.REMOVE), body=b'{"x": ["a", "b", "c"]}')
    assert doc == {"x": ["a", None, "c"]}


def test_detect_counts_and_leaves_body() -> None:
    report = Report()
    policy = Policy(json_rules=(JSONRule("/user/*", Mode.DETECT),))
    assert rewrite_json(BODY, policy, None, report) is BODY
    # 30 and 819012345678 are numbers with no phone shape: counted under the rule's kind
    assert report.found == {"phone": 1, "email": 1, "user_id": 1, "field": 2}


def test_bad_json_and_no_match() -> None:
    report = Report()
    policy = Policy(json_rules=(JSONRule("/a", Mode.REMOVE),))
    assert rewrite_json(b"{nope", policy, None, report) == b"{nope"
    assert report.skipped == {Skip.BAD_JSON: 1}
    assert rewrite_json(b'{"b": 1}', policy, None, report) == b'{"b": 1}'
    deep = b"[" * 100_000 + b"]" * 100_000
    assert rewrite_json(deep, policy, None, report) is deep


def test_tokenizer_failure_empties_value() -> None:
    report = Report()
    policy = Policy(json_rules=(JSONRule("/t", Mode.TOKENIZE),))
    assert rewrite_json(b'{"t": "090-1234-5678"}', policy, None, report) == b'{"t":""}'
    assert report.skipped == {Skip.TOKENIZER_ERROR: 1}
