"""The token format: what a tokenized value looks like in a page and in the form that comes back.

``pii_`` and 22 URL-safe base64 characters: 128 random bits, so tokens cannot be
guessed or enumerated, and only characters that survive HTML attributes, URL
encoding and multipart bodies unchanged, so a token comes back byte for byte.
The vault generates tokens (``format_token(secrets.token_bytes(16))``) and keeps
the mapping; this module only fixes the shape, so that the form swap-back looks
up nothing that is not a token.
"""

from __future__ import annotations

import base64
import re

TOKEN_PREFIX = "pii_"  # noqa: S105 - a format, not a secret
TOKEN_RANDOM_BYTES = 16
# 128 bits are 21 full base64 characters and 2 bits of a 22nd: its low 4 bits are zero.
TOKEN_PATTERN = r"pii_[A-Za-z0-9_-]{21}[AQgw]"  # noqa: S105 - a format, not a secret
TOKEN_RE = re.compile(TOKEN_PATTERN)
"""Use ``fullmatch``: a token is the whole field value."""


def format_token(random: bytes) -> str:
    """The token for 16 random bytes (the vault draws them with ``secrets.token_bytes``)."""
    if len(random) != TOKEN_RANDOM_BYTES:
        raise ValueError(f"a token needs {TOKEN_RANDOM_BYTES} random bytes (got {len(random)})")
    return TOKEN_PREFIX + base64.urlsafe_b64encode(random).rstrip(b"=").decode("ascii")


def is_token(value: str) -> bool:
    return TOKEN_RE.fullmatch(value) is not None
