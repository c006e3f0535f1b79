"""The live view: bounded top talkers that still find the heavy hitters, per-second series, worker merge."""

from __future__ import annotations

import time
from pathlib import Path

from guard.engine.decision import Action
from guard.observe.live import LiveView, Series, TopK, filter_recent, merge
from guard.observe.share import LiveShare
from tests.observe_fixtures import event


def test_topk_finds_heavy_hitters_in_a_flood_of_unique_keys() -> None:
    top = TopK(capacity=500, window=3600)   # finds any key above N/capacity (space-saving bound)
    now = 1000.0
    for i in range(100_000):
        top.add(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now)     # a botnet: every key once
        if i % 100 == 0:
            top.add("203.0.113.9", now)                                   # the heavy hitter
        if i % 250 == 0:
            top.add("198.51.100.1", now)
    assert len(top) <= 2 * 500 + 1
    ranked = [k for k, _ in top.top(2)]
    assert ranked == ["203.0.113.9", "198.51.100.1"]
    assert top.top(1)[0][1] >= 1000        # never under-counted


def test_topk_forgets_old_windows() -> None:
    top = TopK(capacity=10, window=60)
    top.add("old", 0.0, 100)
    top.add("new", 70.0)
    assert dict(top.top(5)) == {"old": 100, "new": 1}    # previous window still counts
    top.add("newer", 200.0)
    assert dict(top.top(5)) == {"newer": 1}


def test_series_buckets_and_expiry() -> None:
    s = Series(60)
    s.add("block", 100.2)
    s.add("block", 100.9)
    s.add("pass", 104.0)
    s.add("nonsense", 104.0)
    w = s.window(104.5, 10, 5)
    assert w["start"] == 95 and w["step"] == 5
    assert w["counts"]["block"] == [0, 2] and w["counts"]["pass"] == [0, 1]
    s.add("pass", 164.0)          # the slot of second 104 is reused: old counts vanish
    assert s.window(164.0, 60, 60)["counts"]["pass"] == [1]


def test_live_view_tracks_hostile_traffic_only() -> None:
    live = LiveView(recent=100, seconds=120, top_capacity=10)
    now = time.time()
    for _ in range(5):
        live.request(event(ip="203.0.113.9", action=Action.BLOCK, rules=("admin-path",), status=403,
                           country="JP", asn=64500, ts=now))
    live.request(event(ip="198.51.100.2", login="login", outcome="failure", user_key="k" * 32, ts=now))
    live.request(event(ip="192.0.2.1", ts=now))   # plain traffic: not a talker
    live.challenge("issued")
    snap = live.snapshot(now=now)
    assert snap["top"]["ip"] == [["203.0.113.9", 5], ["198.51.100.2", 1]]
    assert snap["top"]["subnet"][0] == ["203.0.113.0/24", 5]
    assert snap["top"]["country"] == [["JP", 5]] and snap["top"]["asn"] == [["64500", 5]]
    assert snap["top"]["username"] == [["k" * 32, 1]]
    assert snap["rules"] == {"admin-path": {"enforce": 5, "shadow": 0}}
    assert snap["totals"]["block"] == 5 and snap["totals"]["login_failure"] == 1
    assert snap["totals"]["challenge_issued"] == 1
    assert len(filter_recent(snap["recent"], action="block")) == 5
    assert filter_recent(snap["recent"], ip="192.0.2.1")[0]["action"] == "pass"
    assert filter_recent(snap["recent"], rule="admin-path", limit=2)[1]["rules"] == ["admin-path"]


def test_merge_sums_workers() -> None:
    now = time.time()
    a, b = LiveView(), LiveView()
    a.request(event(ip="203.0.113.9", action=Action.BLOCK, rules=("r",), status=403, ts=now - 1))
    b.request(event(ip="203.0.113.9", action=Action.BLOCK, rules=("r",), status=403, ts=now))
    b.request(event(ip="198.51.100.1", action=Action.BLOCK, rules=("r",), status=403, ts=now))
    m = merge([a.snapshot(now=now), b.snapshot(now=now)])
    assert m["workers"] == 2
    assert m["top"]["ip"][0] == ["203.0.113.9", 2]
    assert m["rules"]["r"]["enforce"] == 3 and m["totals"]["block"] == 3
    assert sum(m["series"]["counts"]["block"]) == 3
    assert [r["ts"] for r in m["recent"]] == sorted((r["ts"] for r in m["recent"]), reverse=True)


async def test_share_merges_peer_snapshots(tmp_path: Path) -> None:
    mine, peer = LiveView(), LiveView()
    peer.request(event(ip="203.0.113.50", action=Action.BLOCK, rules=("r",), status=403))
    share = LiveShare(mine, tmp_path, interval=1.0)
    (tmp_path / "live-999999.json").write_text(__import__("json").dumps(peer.snapshot()))
    view = await share.view()
    assert view["workers"] == 2 and view["top"]["ip"][0][0] == "203.0.113.50"
    assert (await LiveShare(mine, None).view())["top"]["ip"] == []
