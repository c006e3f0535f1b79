"""ListFetcher against a real in-process HTTP server and real files: one refresh cycle per call.

Each test drives ``refresh_once`` (or steps the loop through an injected sleep), so nothing
waits on the wall clock.  The policy under test: only a good new version replaces the list in
use; everything else keeps it and is counted.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from guard.iplists import IPSet, NamedLists
from guard.listfetch import ListFetcher, ListSource, Outcome

GOOD = b"# drop list\n192.0.2.0/24 ; SBL1\n2001:db8::/32\n"
NEWER = b"198.51.100.0/24\n"
ETAG = '"v1"'
LAST_MODIFIED = "Wed, 01 May 2024 10:00:00 GMT"


@dataclass
class ListServer:
    """What the list publisher serves; tests change it between refreshes."""

    body: bytes = GOOD
    status: int = 200
    etag: str | None = ETAG
    last_modified: str | None = LAST_MODIFIED
    mode: str = "plain"     # plain | chunked | gzip | hang
    seen: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cond = {k: v for k, v in request.headers.items() if k in ("If-None-Match", "If-Modified-Since")}
        self.seen.append(cond)
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.status != 200:
            return web.Response(status=self.status, text="<html>oops</html>")
        # RFC 9110 13.2.2: If-None-Match, when sent, decides; If-Modified-Since only without it
        if "If-None-Match" in cond:
            fresh = cond["If-None-Match"] == self.etag
        else:
            fresh = self.last_modified is not None and cond.get("If-Modified-Since") == self.last_modified
        if fresh:
            return web.Response(status=304)
        headers = {}
        if self.etag:
            headers["ETag"] = self.etag
        if self.last_modified:
            headers["Last-Modified"] = self.last_modified
        if self.mode == "gzip":
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=gzip.compress(self.body), headers=headers)
        if self.mode == "chunked":   # no Content-Length: only the running count can stop it
            resp = web.StreamResponse(headers=headers)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(self.body), 4096):
                await resp.write(self.body[i:i + 4096])
            await resp.write_eof()
            return resp
        return web.Response(body=self.body, headers=headers)


@dataclass
class Served:
    lists: ListServer
    server: TestServer
    url: str


@pytest.fixture
async def served(aiohttp_server: AiohttpServer) -> Served:
    ls = ListServer()
    app = web.Application()
    app.router.add_get("/drop.txt", ls.handle)
    server = await aiohttp_server(app)
    return Served(ls, server, str(server.make_url("/drop.txt?key=SECRET-API-KEY")))


@pytest.fixture
async def lists() -> NamedLists:
    # what guard.engine.runtime installs for a URL list before the first download
    return NamedLists({"drop": IPSet()})


def fetcher_for(
    lists: NamedLists, url: str, *,
    max_bytes: int = 1 << 20, cache_dir: Path | None = None, timeout: float = 5.0,
) -> ListFetcher:
    src = ListSource("drop", url=url, refresh=3600, max_bytes=max_bytes)
    return ListFetcher(lists, [src], cache_dir=cache_dir, timeout=timeout)


@pytest.fixture
async def fetcher(lists: NamedLists, served: Served) -> AsyncIterator[ListFetcher]:
    async with fetcher_for(lists, served.url) as f:
        yield f


def drop(lists: NamedLists) -> IPSet:
    s = lists.get("drop")
    assert s is not None
    return s


# ---- URL lists ------------------------------------------------------------------------------------


async def test_200_loads_then_304_keeps(fetcher: ListFetcher, lists: NamedLists, served: Served) -> None:
    assert await fetcher.refresh_once("drop") is Outcome.LOADED
    loaded = drop(lists)
    assert loaded.contains("192.0.2.9") and loaded.contains("2001:db8::1")
    assert served.lists.seen[0] == {}   # nothing to validate against yet

    assert await fetcher.refresh_once("drop") is Outcome.UNCHANGED
    assert served.lists.seen[1] == {"If-None-Match": ETAG, "If-Modified-Since": LAST_MODIFIED}
    assert drop(lists) is loaded        # not re-parsed, not swapped
    st = fetcher.status["drop"]
    assert (st.loads, st.not_modified, st.failures) == (1, 1, 0)
    assert st.last_success is not None and st.source == "url"
    assert (st.entries, st.ranges, st.bad_lines) == (2, 2, 0)


async def test_last_modified_alone_is_enough_for_304(fetcher: ListFetcher, served: Served) -> None:
    served.lists.etag = None
    assert await fetcher.refresh_once("drop") is Outcome.LOADED
    assert await fetcher.refresh_once("drop") is Outcome.UNCHANGED
    assert served.lists.seen[1] == {"If-Modified-Since": LAST_MODIFIED}


async def test_new_version_replaces_old(fetcher: ListFetcher, lists: NamedLists, served: Served) -> None:
    await fetcher.refresh_once("drop")
    served.lists.body, served.lists.etag = NEWER, '"v2"'
    assert await fetcher.refresh_once("drop") is Outcome.LOADED
    assert drop(lists).contains("198.51.100.1") and not drop(lists).contains("192.0.2.9")
    assert fetcher.status["drop"].loads == 2


async def test_server_error_keeps_old_and_counts(
    fetcher: ListFetcher, lists: NamedLists, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guard.listfetch")
    await fetcher.refresh_once("drop")
    loaded = drop(lists)
    served.lists.status = 500
    assert await fetcher.refresh_once("drop") is Outcome.FAILED
    assert await fetcher.refresh_once("drop") is Outcome.FAILED
    assert drop(lists) is loaded
    st = fetcher.status["drop"]
    assert (st.loads, st.failures, st.last_error, st.last_outcome) == (1, 2, "HTTP 500", Outcome.FAILED)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1           # a long outage is one warning, not one per cycle

    served.lists.status = 200
    assert await fetcher.refresh_once("drop") is Outcome.UNCHANGED
    assert st.last_error is None and fetcher.failures == 2
    assert any(r.getMessage() == "IP list source is healthy again" for r in caplog.records)


async def test_no_list_until_first_success_is_a_failure_not_an_empty_swap(
    fetcher: ListFetcher, lists: NamedLists, served: Served
) -> None:
    served.lists.status = 503
    assert await fetcher.refresh_once("drop") is Outcome.FAILED
    assert drop(lists) == IPSet()       # the placeholder is still there
    assert fetcher.status["drop"].loads == 0 and fetcher.status["drop"].last_success is None


@pytest.mark.parametrize("mode", ["plain", "chunked", "gzip"])
async def test_oversized_body_is_rejected(lists: NamedLists, served: Served, mode: str) -> None:
    # gzip: ~4 KB on the wire, 200 KB inflated; the cap counts what we would parse
    async with fetcher_for(lists, served.url, max_bytes=100_000) as f:
        await f.refresh_once("drop")
        loaded = drop(lists)
        served.lists.body, served.lists.etag, served.lists.mode = b"10.0.0.1\n" * 22_000, '"big"', mode
        assert await f.refresh_once("drop") is Outcome.REJECTED
        assert drop(lists) is loaded
        assert f.status["drop"].last_error == "body is larger than max_bytes (100000)"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>\n<body>\n<p>Please log in</p>\n</body>\n</html>\n", "no entries (5 bad lines)"),
        (b"# nothing today\n\n", "no entries (0 bad lines)"),
        (b"10.0.0.1\nnope\nnope\nnope\n", "3 of 4 lines are not addresses or CIDRs"),
    ],
)
async def test_broken_list_is_rejected(
    fetcher: ListFetcher, lists: NamedLists, served: Served, body: bytes, reason: str
) -> None:
    await fetcher.refresh_once("drop")
    loaded = drop(lists)
    served.lists.body, served.lists.etag = body, '"broken"'
    assert await fetcher.refresh_once("drop") is Outcome.REJECTED
    assert drop(lists) is loaded
    assert fetcher.status["drop"].last_error == reason


async def test_a_few_bad_lines_are_tolerated(fetcher: ListFetcher, lists: NamedLists, served: Served) -> None:
    served.lists.body = b"10.0.0.1\n10.0.0.2\nnope\n"
    assert await fetcher.refresh_once("drop") is Outcome.LOADED
    assert fetcher.status["drop"].bad_lines == 1 and drop(lists).contains("10.0.0.2")


async def test_timeout(lists: NamedLists, served: Served) -> None:
    async with fetcher_for(lists, served.url, timeout=0.2) as f:
        served.lists.mode = "hang"
        assert await f.refresh_once("drop") is Outcome.FAILED
        assert f.status["drop"].last_error == "timed out after 0.2s"


async def test_disk_cache_serves_a_restart_without_network(
    tmp_path: Path, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    async with fetcher_for(NamedLists(), served.url, cache_dir=tmp_path) as first:
        assert await first.refresh_once("drop") is Outcome.LOADED
    await served.server.close()        # the list server is gone

    caplog.set_level(logging.INFO, logger="guard.listfetch")
    lists = NamedLists()
    async with fetcher_for(lists, served.url, cache_dir=tmp_path) as second:
        assert await second.refresh_once("drop") is Outcome.FAILED
        assert drop(lists).contains("192.0.2.9")
        st = second.status["drop"]
        assert (st.source, st.loads, st.failures) == ("cache", 1, 1)
        assert st.last_error == "request failed (ClientConnectorError)"
    assert "SECRET-API-KEY" not in caplog.text


async def test_disk_cache_keeps_validators_for_the_next_conditional_get(
    tmp_path: Path, served: Served
) -> None:
    async with fetcher_for(NamedLists(), served.url, cache_dir=tmp_path) as first:
        await first.refresh_once("drop")
    lists = NamedLists()
    async with fetcher_for(lists, served.url, cache_dir=tmp_path) as second:
        assert await second.refresh_once("drop") is Outcome.UNCHANGED   # 304 against the cached copy
        assert served.lists.seen[-1]["If-None-Match"] == ETAG
        assert drop(lists).contains("192.0.2.9")


async def test_disk_cache_of_another_url_is_not_used(tmp_path: Path, served: Served) -> None:
    async with fetcher_for(NamedLists(), served.url, cache_dir=tmp_path) as first:
        await first.refresh_once("drop")
    await served.server.close()
    lists = NamedLists()
    async with fetcher_for(lists, served.url + "&v=2", cache_dir=tmp_path) as second:
        assert await second.refresh_once("drop") is Outcome.FAILED
        assert lists.get("drop") is None


async def test_rejected_download_does_not_overwrite_the_cache(tmp_path: Path, served: Served) -> None:
    async with fetcher_for(NamedLists(), served.url, cache_dir=tmp_path) as first:
        await first.refresh_once("drop")
        served.lists.body, served.lists.etag = b"<html>\n", '"bad"'
        assert await first.refresh_once("drop") is Outcome.REJECTED
    cached = (tmp_path / "drop.list").read_bytes()
    assert cached.endswith(GOOD) and cached.startswith(b"# loginguard-list-cache ")


async def test_log_lines_carry_no_list_content_or_url_secrets(
    fetcher: ListFetcher, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="guard.listfetch")
    served.lists.body = b"203.0.113.77\nsecret-looking-garbage\n10.9.8.7\n"
    await fetcher.refresh_once("drop")
    served.lists.body, served.lists.etag = b"203.0.113.77\nmore-garbage\nmore-garbage\n", '"v9"'
    await fetcher.refresh_once("drop")
    assert len(caplog.records) == 2
    for r in caplog.records:
        text = " ".join([r.getMessage(), *map(str, r.__dict__.values())])
        for leaked in ("203.0.113.77", "10.9.8.7", "garbage", "SECRET-API-KEY"):
            assert leaked not in text
    assert caplog.records[0].__dict__["first_bad_line_numbers"] == "2"


# ---- file lists -----------------------------------------------------------------------------------


def rewrite(path: Path, data: bytes, mtime_ns: int) -> None:
    """Write and set the mtime explicitly: filesystem timestamps are coarser than a fast test."""
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


async def test_file_list_reloads_when_it_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tor.txt"
    rewrite(path, b"192.0.2.1\n", 1_700_000_000_000_000_000)
    lists = NamedLists()
    async with ListFetcher(lists, [ListSource("tor", path=path, refresh=60)]) as f:
        st = f.status["tor"]
        assert await f.refresh_once("tor") is Outcome.LOADED
        assert await f.refresh_once("tor") is Outcome.UNCHANGED
        first = lists["tor"]

        rewrite(path, b"192.0.2.2\n", 1_700_000_001_000_000_000)    # same size, new mtime
        assert await f.refresh_once("tor") is Outcome.LOADED
        assert lists["tor"].contains("192.0.2.2") and not lists["tor"].contains("192.0.2.1")
        assert lists["tor"] is not first and st.source == "file"

        caplog.set_level(logging.WARNING, logger="guard.listfetch")
        rewrite(path, b"half-written\n", 1_700_000_002_000_000_000)
        assert await f.refresh_once("tor") is Outcome.REJECTED
        assert await f.refresh_once("tor") is Outcome.REJECTED   # not re-parsed, not re-logged
        assert lists["tor"].contains("192.0.2.2")
        assert st.failures == 2 and len(caplog.records) == 1

        path.unlink()
        assert await f.refresh_once("tor") is Outcome.FAILED
        assert st.last_error == "cannot read file (No such file or directory)"
        assert lists["tor"].contains("192.0.2.2")

        rewrite(path, b"192.0.2.3\n", 1_700_000_003_000_000_000)
        assert await f.refresh_once("tor") is Outcome.LOADED
        assert st.loads == 3 and st.last_error is None


async def test_oversized_file_is_rejected_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"10.0.0.1\n" * 200)
    async with ListFetcher(NamedLists(), [ListSource("big", path=path, max_bytes=1000)]) as f:
        assert await f.refresh_once("big") is Outcome.REJECTED
        assert f.status["big"].last_error == "file is larger than max_bytes (1000)"


# ---- the loop -------------------------------------------------------------------------------------


class SteppedSleep:
    """An injected sleep: each call reports its delay and waits for the test to say go."""

    def __init__(self) -> None:
        self.delays: asyncio.Queue[float] = asyncio.Queue()
        self.go: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, delay: float) -> None:
        await self.delays.put(delay)
        await self.go.get()


async def test_start_loads_everything_then_each_loop_refreshes(tmp_path: Path, served: Served) -> None:
    path = tmp_path / "allow.txt"
    rewrite(path, b"10.0.0.0/8\n", 1_700_000_000_000_000_000)
    sleep = SteppedSleep()
    lists = NamedLists()
    sources = [ListSource("allow", path=path, refresh=60), ListSource("drop", url=served.url, refresh=600)]
    f = ListFetcher(lists, sources, sleep=sleep, file_poll=5.0)
    await f.start()
    try:
        with pytest.raises(RuntimeError, match="called twice"):
            await f.start()
        assert lists.names() == {"allow", "drop"}                  # ready before start() returns
        delays = sorted([await sleep.delays.get(), await sleep.delays.get()])
        assert delays[0] == 5.0 and 540 <= delays[1] <= 660     # file poll; URL refresh with jitter

        rewrite(path, b"172.16.0.0/12\n", 1_700_000_001_000_000_000)
        for _ in range(2):
            sleep.go.put_nowait(None)
        await sleep.delays.get()                                 # a loop went round and sleeps again
        await sleep.delays.get()
        assert lists["allow"].contains("172.16.0.1")
        assert f.status["drop"].not_modified == 1 and f.loads == 3
    finally:
        await f.close()
    assert f.last_success is not None


async def test_an_unexpected_error_in_one_list_does_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good.txt"
    good.write_bytes(b"10.0.0.0/8\n")
    broken = Path(str(tmp_path / "bad") + "\x00.txt")    # stat() raises ValueError, not OSError
    lists = NamedLists()
    sources = [ListSource("broken", path=broken), ListSource("good", path=good)]
    async with ListFetcher(lists, sources) as f:
        assert await f.refresh_all() == {"broken": Outcome.FAILED, "good": Outcome.LOADED}
        assert f.status["broken"].failures == 1 and f.status["broken"].last_error == "internal error"
        assert lists["good"].contains("10.1.2.3")
    assert "IP list refresh crashed" in caplog.text


# ---- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one of path or url"),
        ({"path": Path("a"), "url": "https://x/"}, "give exactly one of path or url"),
        ({"url": "ftp://user:pw@x/list?key=k"}, "url must be http:// or https:// (got 'ftp://x/list')"),
        ({"url": "https://x/", "refresh": 0}, "refresh must be > 0"),
        ({"url": "https://x/", "max_bytes": 0}, "max_bytes must be > 0"),
    ],
)
def test_list_source_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        ListSource("x", **kwargs)  # type: ignore[arg-type]


def test_duplicate_names_are_an_error() -> None:
    src = ListSource("x", url="https://x/")
    with pytest.raises(ValueError, match="list 'x' given twice"):
        ListFetcher(NamedLists(), [src, src])


async def test_a_file_list_of_only_comments_is_a_valid_empty_list(tmp_path: Path) -> None:
    """The shipped allowlist starts empty: that is a choice, not a broken download."""
    path = tmp_path / "allow.txt"
    path.write_bytes(b"# nothing allowlisted yet\n; another comment\n")
    lists = NamedLists()
    async with ListFetcher(lists, [ListSource("allow", path=path, refresh=60)]) as f:
        assert await f.refresh_once("allow") is Outcome.LOADED
        assert len(lists["allow"]) == 0 and f.status["allow"].failures == 0
