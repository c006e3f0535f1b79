"""The input screen (``TagPolicy._input_screen``) decides as the full path does.

Under a policy of scopes only, an ``<input>`` is first read from ``findall``'s
tuples; only one that changes is parsed with positions.  A screen that said
"untouched" where the full path would change the tag would leak PII, so every
generated tag is rewritten both ways: with the screen, and by a policy that
differs only by a CSS selector that never matches (which turns the screen off).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from guard.pii.css import CSSSelector
from guard.pii.element import TagPolicy
from guard.pii.policy import Mode, Policy, Scope, Selector, default_policy
from guard.pii.report import Report

NEVER = Selector(Mode.MASK, css=CSSSelector.parse("x-never-used"), attr="title")
POLICIES = [
    default_policy(),
    Policy(selectors=(Selector(Mode.REMOVE, scopes=frozenset({Scope.HIDDEN, Scope.INPUTS})),)),
    Policy(selectors=(Selector(Mode.DETECT),)),
]
NAMES = ["type", "TYPE", "name", "value", "VALUE", "Value", "id", "class", "=x", "value2"]
VALUES = ["hidden", "HIDDEN", "hidden/", " hidden ", "&#104;idden", "text", "tel", "mid", "",
          "090-1234-5678", "taro@example.jp", "U4af4980629c2e7f5f6ae1e1cb8d9b3e7", "&#64;", "a&amp;b", "ja"]


@st.composite
def input_tag(draw: st.DrawFn) -> bytes:
    attrs = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(NAMES))
        value = draw(st.sampled_from(VALUES))
        form = draw(st.sampled_from(['{n}="{v}"', "{n}='{v}'", "{n}={v}", "{n}", '{n} = "{v}"']))
        if "{v}" in form and form.startswith("{n}=") and (not value or " " in value):
            form = '{n}="{v}"'
        attrs.append(form.format(n=name, v=value))
    sep = draw(st.sampled_from([" ", "\n", " /"]))
    return ("<" + draw(st.sampled_from(["input", "INPUT"])) + "".join(sep + a for a in attrs)
            + draw(st.sampled_from([">", "/>", " >"]))).encode()


def _with_screen_off(policy: Policy) -> Policy:
    return Policy(selectors=(*policy.selectors, NEVER))


@settings(max_examples=2000, deadline=None)
@given(tag=input_tag(), index=st.integers(0, len(POLICIES) - 1))
def test_screen_and_full_path_agree(tag: bytes, index: int) -> None:
    policy = POLICIES[index]
    screened = TagPolicy(policy, lambda kind, value: "pii_" + kind, Report())
    full = TagPolicy(_with_screen_off(policy), lambda kind, value: "pii_" + kind, Report())
    assert screened._css == () and full._css != ()
    assert screened.rewrite(tag) == full.rewrite(tag), tag
    assert screened.report.found == full.report.found
    assert screened.report.actions == full.report.actions
