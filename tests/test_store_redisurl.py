"""``store.url`` names one Redis, a Sentinel-watched master or a Cluster; mistakes are caught at load."""

from __future__ import annotations

import pytest

from guard.config import StoreConfig, load_config_text
from guard.store.redisurl import RedisTarget, parse_redis_url
from guard.yamlsource import SourceError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://r:6379/1", RedisTarget("standalone", "redis://r:6379/1")),
        ("unix:///run/redis.sock", RedisTarget("standalone", "unix:///run/redis.sock")),
        ("redis+sentinel://s1:26380,s2/mymaster",
         RedisTarget("sentinel", "", (("s1", 26380), ("s2", 26379)), "mymaster")),
        ("redis+sentinel://:p%40ss@s1:26379/m/3",
         RedisTarget("sentinel", "", (("s1", 26379),), "m", 3, None, "p@ss")),
        ("redis+sentinel://guard:pw@[2001:db8::1]:26379,[2001:db8::2]/m",
         RedisTarget("sentinel", "", (("2001:db8::1", 26379), ("2001:db8::2", 26379)), "m", 0, "guard", "pw")),
        ("redis+cluster://n1:7000,n2:7001,n3", RedisTarget("cluster", "", (("n1", 7000), ("n2", 7001), ("n3", 6379)))),
        ("redis+cluster://n1:7000/0", RedisTarget("cluster", "", (("n1", 7000),))),
    ],
)
def test_urls_parse(url: str, expected: RedisTarget) -> None:
    got = parse_redis_url(url)
    assert (got.mode, got.nodes, got.service, got.db, got.username, got.password) == (
        expected.mode, expected.nodes, expected.service, expected.db, expected.username, expected.password,
    )
    assert got.url == url


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://r", "expected a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL"),
        ("redis+sentinel://s1:26379", "needs the master's name as its path"),
        ("redis+sentinel://s1:26379/m/x", 'the database must be a number (got "x")'),
        ("redis+sentinel://s1:26379/m/0/extra", "needs the master's name"),
        ("redis+sentinel://s1:26379/m?sentinel_password=x", "take no query options"),
        ("redis+cluster://n1:7000/2", "only database 0"),
        ("redis+cluster://n1:70000", 'bad port "70000" for node n1'),
        ("redis+cluster://n1:abc", 'bad port "abc"'),
        ("redis+cluster://n1:7000,,n2", "every node needs a host"),
        ("redis+cluster://[::1", "bad IPv6 node"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_redis_url(url)
    assert error in str(caught.value)


def test_the_config_checks_the_url_at_load_and_never_echoes_a_password() -> None:
    ok = StoreConfig.model_validate({"backend": "redis", "url": "redis+cluster://n1:7000,n2:7001"})
    assert ok.url == "redis+cluster://n1:7000,n2:7001"
    text = "upstream: http://x\nstore:\n  url: redis+sentinel://guard:hunter2@s1:26379\n"
    with pytest.raises(SourceError) as caught:
        load_config_text(text, "guard.yaml", {})
    assert [str(p) for p in caught.value.problems] == [
        "guard.yaml:3:3: store.url: a redis+sentinel URL needs the master's name as its path: "
        "redis+sentinel://host:26379[,host:port...]/<master>[/<db>] (got \"redis+sentinel://guard:***@s1:26379\")"
    ]


def test_a_target_does_not_show_its_password() -> None:
    target = parse_redis_url("redis+cluster://guard:hunter2@n1:7000")
    assert "hunter2" not in repr(target)
