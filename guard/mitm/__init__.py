"""loginguard inside mitmproxy: ``mitmdump -s guard/mitm/addon.py --set guard_config=guard.yaml``.

The addon lives in ``guard.mitm.addon``.  This package module is imported once
per process, whereas mitmproxy re-executes the addon file as a fresh module
whenever it changes on disk (script reload); state that must outlive one addon
instance therefore lives here.
"""

from __future__ import annotations

import asyncio

stopping: asyncio.Task[None] | None = None
"""The last addon instance's shutdown, still running or done.

A reloaded script's new instance waits for it before binding the admin port and
opening the store, so two instances never hold them at once.
"""
