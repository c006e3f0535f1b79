"""Find a recipient address over HTTP when the login id is not one (a member number, a nickname).

``GET <url>`` with ``{login}`` and ``{account}`` replaced (URL-quoted, by plain
replacement: no format-string evaluation of user input), then a JSON pointer
into the answer.  Bounded by a timeout; every failure is a value.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import aiohttp

_EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")


def is_email(text: str) -> bool:
    return len(text) <= 254 and bool(_EMAIL.fullmatch(text))  # fullmatch: no trailing newline


def build_url(template: str, login_id: str, account_key: str) -> str:
    return template.replace("{login}", quote(login_id, safe="")).replace(
        "{account}", quote(account_key, safe="")
    )


def resolve_pointer(doc: object, pointer: str) -> object:
    """RFC 6901; ``KeyError`` when the path does not exist."""
    if pointer == "":
        return doc
    node = doc
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node[part]
        elif isinstance(node, list) and part.isdigit():
            node = node[int(part)]
        else:
            raise KeyError(part)
    return node


class LookupError_(Exception):
    """The lookup answered nothing usable (the message names no PII)."""


async def lookup_address(
    session: aiohttp.ClientSession,
    url: str,
    pointer: str,
    token: str | None,
    seconds: float,
) -> str:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with session.get(
        url, headers=headers, timeout=aiohttp.ClientTimeout(total=seconds), allow_redirects=False
    ) as resp:
        if resp.status != 200:
            raise LookupError_(f"lookup answered HTTP {resp.status}")
        raw = await resp.content.read(64 * 1024)
    try:
        value = resolve_pointer(json.loads(raw), pointer)
    except (ValueError, KeyError, IndexError):
        raise LookupError_("lookup answer has no address at the pointer") from None
    if not isinstance(value, str) or not is_email(value):
        raise LookupError_("lookup answer is not an e-mail address")
    return value
