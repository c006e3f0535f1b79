"""IP list downloads follow redirects only within the configured origin, under one size cap and one timeout.

Real in-process aiohttp servers: the publisher, and an "internal" server on another port that
stands for what a cross-origin redirect would reach (a metadata endpoint, an admin port).  The
internal server must never see a request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from guard.iplists import IPSet, NamedLists
from guard.listfetch import MAX_REDIRECTS, ListFetcher, ListSource, Outcome

GOOD = b"192.0.2.0/24\n2001:db8::/32\n"


@dataclass
class Publisher:
    """Paths: /list (the list), /to?where=URL (a redirect there), /loop/<n> (redirects on and on)."""

    body: bytes = GOOD
    delay: float = 0.0
    paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        if self.delay:
            await asyncio.sleep(self.delay)   # a slow hop: what the total timeout must bound
        if request.path == "/list":
            return web.Response(body=self.body)
        if request.path == "/to":
            raise web.HTTPFound(request.query["where"])
        if request.path.startswith("/loop/"):
            n = int(request.path.rsplit("/", 1)[1])
            raise web.HTTPTemporaryRedirect(f"/loop/{n + 1}")
        return web.Response(status=404)


@dataclass
class Servers:
    publisher: Publisher
    pub: TestServer
    internal: Publisher
    other: TestServer

    def pub_url(self, path: str) -> str:
        return str(self.pub.make_url(path))

    def other_url(self, path: str) -> str:
        return str(self.other.make_url(path))


@pytest.fixture
async def servers(aiohttp_server: AiohttpServer) -> Servers:
    pub, internal = Publisher(), Publisher(body=b"10.0.0.0/8\n")
    apps = []
    for p in (pub, internal):
        app = web.Application()
        app.router.add_get("/{tail:.*}", p.handle)
        apps.append(await aiohttp_server(app))
    return Servers(pub, apps[0], internal, apps[1])


@pytest.fixture
async def lists() -> NamedLists:
    return NamedLists({"drop": IPSet()})


def fetcher(lists: NamedLists, url: str, *, max_bytes: int = 1 << 20, timeout: float = 5.0) -> ListFetcher:
    return ListFetcher(lists, [ListSource("drop", url=url, max_bytes=max_bytes)], timeout=timeout)


def holds(lists: NamedLists, ip: str) -> bool:
    ipset = lists.get("drop")
    return ipset is not None and ipset.contains(ip)


@pytest.mark.parametrize("location", ["/list", "list", "{pub}/list"])
async def test_a_redirect_within_the_origin_is_followed(
    servers: Servers, lists: NamedLists, location: str,
) -> None:
    where = location.format(pub=servers.pub_url("").rstrip("/"))
    async with fetcher(lists, servers.pub_url(f"/to?where={where}&key=SECRET")) as f:
        assert await f.refresh_once("drop") is Outcome.LOADED
    assert holds(lists, "192.0.2.9")
    assert servers.publisher.paths[-1] == "/list"


@pytest.mark.parametrize("target", [
    "{other}/list",                            # another port: another origin (the internal service)
    "http://localhost:{other_port}/list",     # another host name
    "https://127.0.0.1:{pub_port}/list",      # the same host, another scheme
    "{other}/latest/meta-data/",               # what a cloud metadata endpoint would look like
])
async def test_a_redirect_to_another_origin_is_refused_and_keeps_the_old_list(
    servers: Servers, lists: NamedLists, caplog: pytest.LogCaptureFixture, target: str,
) -> None:
    caplog.set_level(logging.INFO, logger="guard.listfetch")
    lists.set("drop", IPSet.from_iterable(["198.51.100.0/24"]))
    where = target.format(other=servers.other_url("").rstrip("/"), other_port=servers.other.port,
                          pub_port=servers.pub.port)
    async with fetcher(lists, servers.pub_url(f"/to?where={where}&key=SECRET")) as f:
        assert await f.refresh_once("drop") is Outcome.FAILED
        status = f.status["drop"]
    assert status.failures == 1 and status.last_error is not None
    assert "redirect to another origin refused" in status.last_error
    assert "/list" not in status.last_error and "meta-data" not in status.last_error   # origin only
    assert servers.internal.paths == []                    # never reached
    assert holds(lists, "198.51.100.7") and not holds(lists, "10.1.2.3")
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "SECRET" not in logged and "meta-data" not in logged


async def test_a_redirect_loop_stops(servers: Servers, lists: NamedLists) -> None:
    async with fetcher(lists, servers.pub_url("/loop/0")) as f:
        assert await f.refresh_once("drop") is Outcome.FAILED
        assert f.status["drop"].last_error == f"more than {MAX_REDIRECTS} redirects"
    assert len(servers.publisher.paths) == MAX_REDIRECTS + 1


async def test_the_size_cap_holds_behind_a_redirect(servers: Servers, lists: NamedLists) -> None:
    servers.publisher.body = b"192.0.2.1\n" * 20_000
    async with fetcher(lists, servers.pub_url("/to?where=/list"), max_bytes=64 * 1024) as f:
        assert await f.refresh_once("drop") is Outcome.REJECTED
        assert "larger than max_bytes" in (f.status["drop"].last_error or "")


async def test_one_timeout_covers_every_hop(servers: Servers, lists: NamedLists) -> None:
    """Five slow hops, each within the timeout, together beyond it: the download times out."""
    servers.publisher.delay = 0.3
    async with fetcher(lists, servers.pub_url("/loop/0"), timeout=1.0) as f:
        started = asyncio.get_running_loop().time()
        assert await f.refresh_once("drop") is Outcome.FAILED
        assert asyncio.get_running_loop().time() - started < 2.0
        assert (f.status["drop"].last_error or "").startswith("timed out")
