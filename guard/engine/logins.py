"""Which requests are logins: compiled once from the config, matched per request.

Exact paths are a dict lookup, so the common case (no login, or an exact login
path) costs one hash per request; prefixes and regexes are tried only when
configured.  Regexes run on RE2 like the rules' (``guard.rules.regex``): every
request path is matched against them, and the path is the attacker's.
"""

from __future__ import annotations

from collections.abc import Iterable

from guard.config import LoginEndpoint
from guard.rules.regex import Matcher, compile_regex


class LoginMatcher:
    __slots__ = ("_exact", "_prefix", "_regex", "endpoints")

    def __init__(self, endpoints: Iterable[LoginEndpoint]) -> None:
        self.endpoints = {ep.id: ep for ep in endpoints}
        self._exact: dict[str, list[LoginEndpoint]] = {}
        self._prefix: list[LoginEndpoint] = []
        self._regex: list[tuple[Matcher, LoginEndpoint]] = []
        for ep in self.endpoints.values():
            if ep.match == "exact":
                self._exact.setdefault(ep.path, []).append(ep)
            elif ep.match == "prefix":
                self._prefix.append(ep)
            else:
                self._regex.append((compile_regex(ep.path), ep))  # validated at config load

    def __bool__(self) -> bool:
        return bool(self.endpoints)

    def match(self, method: str, path: str) -> LoginEndpoint | None:
        for ep in self._exact.get(path, ()):
            if method in ep.methods:
                return ep
        for ep in self._prefix:
            if path.startswith(ep.path) and method in ep.methods:
                return ep
        for rx, ep in self._regex:
            if method in ep.methods and rx.fullmatch(path):
                return ep
        return None
