"""What the adapters tell the engine about a request and a response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestFacts:
    """One request, as the engine sees it.

    ``headers`` is any case-insensitive mapping the adapter already has (aiohttp's
    ``CIMultiDictProxy``, mitmproxy's ``Headers``): no copy on the hot path.
    ``body`` is set only for requests a stage asked to buffer (logins).
    """

    client_ip: str
    method: str
    path: str
    query: str = ""
    host: str = ""
    scheme: str = "http"
    headers: Mapping[str, str] = field(default_factory=dict)
    peer: str = ""
    login: str | None = None          # id of the matched login endpoint
    body: bytes | None = None
    content_type: str = ""
    outcome: str | None = None        # login outcome once the upstream answered (success/failure/unknown)
    scratch: Any = None               # the engine's per-request state between phases; adapters don't touch it


@dataclass(slots=True)
class ResponseFacts:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body_head: bytes = b""            # first bytes of the body, when a stage asked for them
