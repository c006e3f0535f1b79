"""The production adapter: an aiohttp reverse proxy that drives the engine.

``server.GuardServer`` assembles the pieces; each other module holds one idea:
``listener`` (sockets, TLS, PROXY protocol), ``protocol`` (per-connection
limits), ``proxy`` (the request handler), ``headers`` and ``target`` (what is
forwarded), ``upstream`` (the connection pool), ``websocket``, ``pages`` (the
guard's own answers), ``settings`` (the live-reloadable part of the config) and
``admin`` (health endpoints).
"""

from guard.http.server import GuardServer

__all__ = ["GuardServer"]
