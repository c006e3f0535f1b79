"""Shared helpers for the PII tests: an in-memory token vault and a chunked driver (no tests here)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

from guard.pii.policy import Policy
from guard.pii.rewriter import HTMLRewriter
from guard.pii.token import format_token

FUZZ_EXAMPLES = int(os.environ.get("PII_FUZZ_EXAMPLES", "150"))
"""Hypothesis examples per property; raise it for long fuzz runs (``PII_FUZZ_EXAMPLES=20000``)."""


class Vault:
    """A token vault in a dict, with the session binding the real one has."""

    def __init__(self, session: str = "s1") -> None:
        self.session = session
        self.values: dict[str, tuple[str, str, str]] = {}   # token -> (session, kind, value)

    def tokenize(self, kind: str, value: str) -> str:
        token = format_token(secrets.token_bytes(16))
        self.values[token] = (self.session, kind, value)
        return token

    def resolver(self, session: str) -> Callable[[str], str | None]:
        """The resolve callback that requests of ``session`` get."""

        def resolve(token: str) -> str | None:
            entry = self.values.get(token)
            return entry[2] if entry is not None and entry[0] == session else None

        return resolve

    def original(self, token: str) -> str:
        return self.values[token][2]


def rewrite(policy: Policy, data: bytes, chunk: int | None = None, charset: str | None = "utf-8",
            vault: Vault | None = None) -> tuple[bytes, HTMLRewriter]:
    """Run a page through a fresh rewriter in ``chunk``-byte pieces (None: one piece)."""
    vault = vault or Vault()
    rw = HTMLRewriter(policy, vault.tokenize, charset)
    size = chunk or max(1, len(data))
    out = [rw.feed(data[i : i + size]) for i in range(0, len(data), size)]
    out.append(rw.close())
    return b"".join(out), rw


def split_feed(policy: Policy, data: bytes, cuts: list[int], charset: str | None = "utf-8") -> bytes:
    """Feed ``data`` cut at the given offsets, with a deterministic tokenizer."""
    rw = HTMLRewriter(policy, lambda kind, value: f"pii_{kind}_{len(value)}", charset)
    out = []
    prev = 0
    for c in [*sorted(set(cuts)), len(data)]:
        out.append(rw.feed(data[prev:c]))
        prev = c
    out.append(rw.close())
    return b"".join(out)
