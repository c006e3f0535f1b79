"""Second factor for any legacy login, without a validity oracle.

The engine and the proxy use ``Challenges`` (``service``); the rest are its
parts, one idea per module: ``keys`` and ``sealed`` (crypto), ``codes``,
``holds`` (the lifecycle on the store), ``ratelimit``, ``channels`` (a registry
of code channels), ``pages`` and ``i18n`` (the interstitial), ``devices``
(trusted-device cookies), ``notify`` (login notifications), ``settings`` (the
``challenge:`` section of guard.yaml).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Imported on first use: guard.config imports ``challenge.settings``, and the service
# imports the engine, which imports guard.config.
_EXPORTS = {
    "PAGE_CSP": "guard.challenge.pages", "Page": "guard.challenge.pages", "State": "guard.challenge.pages",
    "Mode": "guard.challenge.holds", "Verdict": "guard.challenge.holds",
    "HeldMessage": "guard.challenge.sealed",
    "Answer": "guard.challenge.service", "Challenges": "guard.challenge.service", "Login": "guard.challenge.service",
    "ChallengeSettings": "guard.challenge.settings",
}

if TYPE_CHECKING:
    from guard.challenge.holds import Mode, Verdict
    from guard.challenge.pages import PAGE_CSP, Page, State
    from guard.challenge.sealed import HeldMessage
    from guard.challenge.service import Answer, Challenges, Login
    from guard.challenge.settings import ChallengeSettings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "PAGE_CSP",
    "Answer",
    "ChallengeSettings",
    "Challenges",
    "HeldMessage",
    "Login",
    "Mode",
    "Page",
    "State",
    "Verdict",
]
