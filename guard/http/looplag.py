"""Event-loop lag: the guard's own measure of "too busy", for shedding new requests early.

Why this exists
---------------
Past capacity, a proxy on one event loop does not slow down evenly: every
admitted request shares the one CPU, so each takes longer, clients keep their
keep-alive connections busy, and the excess queues *in the clients* (and in the
kernel's socket buffers), where no guard-side limit sees it.  Measured with
``bench/soak.py`` at twice capacity, that wait reached a 20 s p99 while
``limits.max_queue_time`` (which times a request from its parsed head to its
turn) never fired: each request got its turn in milliseconds and then crawled.

The loop's lag is the signal that sees this: a timer asked to fire every
``INTERVAL`` seconds fires late by about the time one pass over all the ready
work takes.  While the lag stays above ``limits.max_loop_lag``, a new request
gets a 503 (no rules, no upstream: microseconds), so the work already admitted
finishes in bounded time and the clients see an answer instead of a timeout.
This is what fastify's ``under-pressure`` and Envoy's overload manager do; no
library offers it for aiohttp, so it is these few lines.

One slow pass is not overload: a full garbage collection of a large store
pauses the loop for tens of milliseconds once.  So the guard sheds only while
the *smallest* of the last ``SAMPLES`` lags is above the limit: the loop has
been late on every tick for a while, not once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

INTERVAL = 0.025
"""Seconds between ticks: 40 timer callbacks a second, nothing next to the requests."""

SAMPLES = 3
"""Consecutive late ticks before the guard calls itself overloaded (about 75 ms plus the lags)."""


class LoopLag:
    """Samples the running loop's lag; ``overloaded`` is read by the request path (one comparison)."""

    __slots__ = ("_due", "_handle", "_lags", "_now", "lag", "limit", "overloaded", "peak")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.lag = 0.0          # the last tick's lag, seconds
        self.peak = 0.0         # the largest lag since the last ``take_peak()``
        self.overloaded = False
        self._lags: deque[float] = deque([0.0] * SAMPLES, maxlen=SAMPLES)
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._now = time.perf_counter  # loop.time() ticks in whole milliseconds on uvloop

    def start(self) -> None:
        if self._handle is None:
            self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.overloaded = False

    def take_peak(self) -> float:
        """The largest lag since the last call (a gauge scraped now and then sees spikes)."""
        peak, self.peak = self.peak, self.lag
        return peak

    def _arm(self) -> None:
        self._due = self._now() + INTERVAL
        self._handle = asyncio.get_running_loop().call_later(INTERVAL, self._tick)

    def _tick(self) -> None:
        lag = max(0.0, self._now() - self._due)
        self.lag = lag
        if lag > self.peak:
            self.peak = lag
        lags = self._lags
        lags.append(lag)
        self.overloaded = min(lags) > self.limit
        self._arm()
