"""PII in responses: hide it (remove, mask, tokenize) or find it (detect), and swap tokens back on submit.

The package is pure (no I/O, no aiohttp): the proxy drives it (``guard.http.piiflow``).  The
exceptions sit at its edges and are imported by name, not from here: ``vault`` (tokens in the
store), ``settings`` (the ``pii:`` config section) and ``audit`` (the ``guard audit`` command).
Per HTML response::

    if response.is_rewritable(method, status, content_type, content_encodings):
        codings = encoding.parse_content_encoding(content_encodings)
        changes = response.header_changes(etag, cache_control, codings, reencode=True,
                                          tokenizes=policy.tokenizes)
        changes.apply(headers)
        rw = HTMLRewriter(policy, None, media_type(content_type)[1], field_tokenizer=page.tokenize)
        body = BodyTransform(rw, codings, reencode=True)
        for chunk in upstream: for piece in body.feed(chunk): send(piece)
        for piece in body.close(): send(piece)
        report(rw.report)

(``page`` is a ``vault.PageTokens``: its tokens are bound to the browser and to the field
the rewriter says they are for; its queued store writes are flushed before the bytes that
carry them are sent.)  Per submitted form: ``lookup = await vault.fetch(find_tokens(...))``,
then ``forms.swap_back(body, content_type, charset=..., resolve_field=lookup.resolve)``, and
``forms.swap_back_query(...)`` for GET forms.
Per JSON response: ``json.rewrite_json(body, policy, page.json_tokenize, report)``.
"""

from guard.pii.css import CSSSelector
from guard.pii.detect import NameMatcher, builtin_detectors, custom_detector
from guard.pii.element import FieldTokenizer, Tokenizer, Where
from guard.pii.encoding import BodyTransform, DecodeError, parse_content_encoding
from guard.pii.forms import (
    FieldResolver,
    Resolver,
    SwapResult,
    find_tokens,
    find_tokens_query,
    swap_back,
    swap_back_query,
)
from guard.pii.json import rewrite_json
from guard.pii.mask import Mask
from guard.pii.policy import JSONRule, Mode, Policy, Scope, Selector, default_policy
from guard.pii.report import Report, Skip
from guard.pii.response import HeaderChanges, header_changes, is_rewritable, media_type
from guard.pii.rewriter import HTMLRewriter
from guard.pii.token import TOKEN_PATTERN, TOKEN_RE, format_token, is_token

__all__ = [
    "TOKEN_PATTERN",
    "TOKEN_RE",
    "BodyTransform",
    "CSSSelector",
    "DecodeError",
    "FieldResolver",
    "FieldTokenizer",
    "HTMLRewriter",
    "HeaderChanges",
    "JSONRule",
    "Mask",
    "Mode",
    "NameMatcher",
    "Policy",
    "Report",
    "Resolver",
    "Scope",
    "Selector",
    "Skip",
    "SwapResult",
    "Tokenizer",
    "Where",
    "builtin_detectors",
    "custom_detector",
    "default_policy",
    "find_tokens",
    "find_tokens_query",
    "format_token",
    "header_changes",
    "is_rewritable",
    "is_token",
    "media_type",
    "parse_content_encoding",
    "rewrite_json",
    "swap_back",
    "swap_back_query",
]
