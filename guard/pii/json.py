"""PII in JSON response bodies, selected by JSON pointer (RFC 6901), with the HTML modes.

Legacy pages often fetch the same data the form embeds (``/api/me`` returning
``{"tel": ...}``), so the fields the HTML rewriter hides must be hideable here
too.  JSON has no byte-level structure worth preserving, so the body is parsed
whole (up to ``MAX_JSON_BYTES``; the caller buffers it) and re-serialised only
when something changed; an unchanged body is returned as the same bytes.

Pointer extension: a reference token ``*`` matches every member of an object or
element of an array (``/users/*/phone``).  Only scalar values are treated: a
pointer that lands on an object or array selects nothing.  ``remove`` deletes an
object member; in an array it writes ``null``, so the other indexes keep their
meaning.  Numbers and booleans selected for ``mask`` or ``tokenize`` become
strings (a phone number stored as a number is still a phone number).
"""

from __future__ import annotations

import json
from typing import Any

from guard.pii.detect import kinds_in
from guard.pii.element import Tokenizer, tokenize
from guard.pii.policy import JSONRule, Mode, Policy
from guard.pii.report import Report, Skip

MAX_JSON_BYTES = 4 * 1024 * 1024
"""Larger bodies pass through unchanged (reported as ``bad-json``)."""

_WILDCARD = "*"


def rewrite_json(body: bytes, policy: Policy, tokenizer: Tokenizer | None, report: Report) -> bytes:
    """``body`` with the policy's JSON rules applied (the same object when nothing changed)."""
    if not policy.json_rules:
        return body
    if len(body) > MAX_JSON_BYTES:
        report.skipped[Skip.BAD_JSON] += 1
        return body
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        report.skipped[Skip.BAD_JSON] += 1
        return body
    changed = False
    for rule in policy.json_rules:
        for container, key in list(_select(doc, rule.tokens)):
            changed |= _apply(container, key, rule, policy, tokenizer, report)
    if not changed:
        return body
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _select(node: Any, tokens: tuple[str, ...]) -> list[tuple[Any, Any]]:
    """``(container, key)`` pairs the pointer designates (iterative: no recursion on deep input)."""
    level: list[Any] = [node]
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        nxt: list[Any] = []
        out: list[tuple[Any, Any]] = []
        for n in level:
            for key in _keys(n, token):
                if last:
                    out.append((n, key))
                else:
                    nxt.append(n[key])
        if last:
            return out
        level = nxt
    return []


def _keys(node: Any, ref: str) -> list[Any]:
    if isinstance(node, dict):
        if ref == _WILDCARD:
            return list(node)
        return [ref] if ref in node else []
    if isinstance(node, list):
        if ref == _WILDCARD:
            return list(range(len(node)))
        # RFC 6901: decimal digits without leading zeros ("-" is past the end: nothing)
        if ref.isascii() and ref.isdigit() and (ref == "0" or not ref.startswith("0")):
            idx = int(ref)
            return [idx] if idx < len(node) else []
    return []


def _apply(container: Any, key: Any, rule: JSONRule, policy: Policy, tokenizer: Tokenizer | None,
           report: Report) -> bool:
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False   # objects, arrays, booleans and null carry no PII of their own
    text = value if isinstance(value, str) else json.dumps(value)
    if not text:
        return False
    found = kinds_in(text, policy.detectors)
    relevant = [k for k in found if rule.kinds is None or k in rule.kinds]
    if rule.kinds is not None and not relevant:
        return False
    kind = relevant[0] if relevant else rule.kind
    if rule.mode is Mode.DETECT:
        for k in relevant or [rule.kind]:
            report.found[k] += 1
        return False
    if rule.mode is Mode.REMOVE:
        if isinstance(container, dict):
            del container[key]
        else:
            container[key] = None
    elif rule.mode is Mode.MASK:
        container[key] = rule.mask.apply(text)
    else:
        container[key] = tokenize(tokenizer, kind, text, report)
    report.actions[kind, rule.mode.value] += 1
    return True
