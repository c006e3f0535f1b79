"""Second factor for any legacy login, without a validity oracle.

The engine and the proxy use ``Challenges`` (``service``); the rest are its
parts, one idea per module: ``keys`` and ``sealed`` (crypto), ``codes``,
``holds`` (the lifecycle on the store), ``ratelimit``, ``channels`` (a registry
of code channels), ``pages`` and ``i18n`` (the interstitial), ``devices``
(trusted-device cookies), ``notify`` (login notifications), ``settings`` (the
``challenge:`` section of guard.yaml).
"""

from __future__ import annotations

from guard.challenge.holds import Mode, Verdict
from guard.challenge.pages import PAGE_CSP, Page, State
from guard.challenge.sealed import HeldMessage
from guard.challenge.service import Answer, Challenges, Login
from guard.challenge.settings import ChallengeSettings

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
