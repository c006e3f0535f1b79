"""guard.challenge.channels.totp: RFC 6238 vectors, replay protection, sealed enrolment, import, QR."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest

from guard.challenge.channels.totp import (
    EnrolmentError,
    Enrolments,
    decode_secret,
    hotp,
    new_secret,
    parse_enrolments,
    provisioning_uri,
    qr_svg,
    record_key,
    totp,
)
from guard.challenge.keys import KeyRing
from guard.challenge.sealed import Sealer
from guard.challenge.settings import TotpSettings
from guard.store import Get, MemoryStore, RedisStore, Store

SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
# RFC 6238 Appendix B: (time, sha1, sha256, sha512), 8 digits, 30 s steps.
RFC6238 = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("t", "sha1", "sha256", "sha512"), RFC6238)
def test_rfc6238_vectors(t: int, sha1: str, sha256: str, sha512: str) -> None:
    for algorithm, expected in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        assert totp(SEEDS[algorithm], t, digits=8, period=30, algorithm=algorithm) == expected


def test_rfc4226_hotp_vectors() -> None:
    expected = [
        "755224",
        "287082",
        "359152",
        "969429",
        "338314",
        "254676",
        "287922",
        "162583",
        "399871",
        "520489",
    ]
    assert [hotp(SEEDS["sha1"], i) for i in range(10)] == expected


def test_agrees_with_pyotp() -> None:
    secret = new_secret()
    for t in (0, 59, 1_700_000_000, 1_700_000_029, 1_700_000_030):
        assert totp(decode_secret(secret), t) == pyotp.TOTP(secret).at(t)


def test_secret_decoding() -> None:
    assert decode_secret("gezd gnbv gy3t qojq gezd gnbv gy3t qojq") == SEEDS["sha1"]
    with pytest.raises(ValueError, match="base32"):
        decode_secret("not base32!")
    with pytest.raises(ValueError, match="80 bits"):
        decode_secret("GEZDGNBV")


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), timeout=2.0)
    await s.start()
    yield s
    await s.close()


def enrolments(store: Store, **kw: object) -> Enrolments:
    return Enrolments(store, Sealer(KeyRing([b"\x05" * 32])), TotpSettings.model_validate(kw))


SECRET = base64.b32encode(SEEDS["sha1"]).decode()
NOW = 1_700_000_015.0  # the middle of a 30 s step


async def test_current_code_accepted_once_then_replay_refused(store: Store) -> None:
    e = enrolments(store)
    await e.enroll("acct", SECRET, NOW)
    code = totp(SEEDS["sha1"], NOW)
    assert await e.check("acct", code, NOW, commit=True)
    assert not await e.check("acct", code, NOW + 1, commit=True)  # same step again
    # An earlier step's code is refused once a later one was used (no going back in time).
    older = totp(SEEDS["sha1"], NOW - 30)
    assert not await e.check("acct", older, NOW + 2, commit=True)
    assert await e.check("acct", totp(SEEDS["sha1"], NOW + 30), NOW + 30, commit=True)


@pytest.mark.parametrize(
    ("offset", "window", "ok"),
    [(-30, 1, True), (30, 1, True), (-60, 1, False), (60, 1, False), (-30, 0, False), (60, 2, True)],
)
async def test_window(store: Store, offset: int, window: int, ok: bool) -> None:
    e = enrolments(store, window=window)
    await e.enroll("acct", SECRET, NOW)
    assert await e.check("acct", totp(SEEDS["sha1"], NOW + offset), NOW, commit=True) is ok


async def test_without_commit_or_enrolment_nothing_passes(store: Store) -> None:
    e = enrolments(store)
    await e.enroll("acct", SECRET, NOW)
    code = totp(SEEDS["sha1"], NOW)
    assert not await e.check("acct", code, NOW, commit=False)  # unarmed hold: same work, always False
    assert await e.check("acct", code, NOW, commit=True)  # and the step was not burnt by it
    assert not await e.check("nobody", code, NOW, commit=True)


async def test_secret_is_sealed_at_rest_and_bound_to_the_account(store: Store) -> None:
    e = enrolments(store)
    await e.enroll("acct", SECRET, NOW)
    (blob,) = await store.execute([Get(record_key("acct"))], NOW)
    assert SEEDS["sha1"] not in bytes(blob) and SECRET.encode() not in bytes(blob)
    from guard.store import Put

    await store.execute([Put(record_key("other"), bytes(blob), 600.0)], NOW)  # copied to another account
    assert not await e.check("other", totp(SEEDS["sha1"], NOW), NOW, commit=True)
    assert await e.enrolled("acct", NOW) and await e.remove("acct", NOW) and not await e.enrolled("acct", NOW)


def test_parse_csv_and_json() -> None:
    csv_text = (
        "\ufeffusername,secret\n# comment\nalice@example.com,JBSWY3DPEHPK3PXP\nbob, jbsw y3dp ehpk 3pxp\n"
    )
    assert parse_enrolments(csv_text, "e.csv") == {
        "alice@example.com": "JBSWY3DPEHPK3PXP",
        "bob": "jbsw y3dp ehpk 3pxp",
    }
    assert parse_enrolments('{"alice": "JBSWY3DPEHPK3PXP"}', "e.json") == {"alice": "JBSWY3DPEHPK3PXP"}
    assert parse_enrolments('[{"username": "bob", "secret": "JBSWY3DPEHPK3PXP"}]', "e.json") == {
        "bob": "JBSWY3DPEHPK3PXP"
    }


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("alice,JBSWY3DPEHPK3PXP\nbob,QQQQ\n", "e.txt:2"),
        ("alice\n", "e.txt:1"),
        ('{"alice": 5}', "entry 1"),
        ('{"alice": ', "e.txt:1"),
    ],
)
def test_parse_errors_name_the_line_never_the_secret(text: str, where: str) -> None:
    with pytest.raises(EnrolmentError) as err:
        parse_enrolments(text, "e.txt")
    assert where in str(err.value) and "alice" not in str(err.value) and "QQQQ" not in str(err.value)


async def test_import_file(tmp_path: Path) -> None:
    path = tmp_path / "totp.csv"
    path.write_text(f"alice,{SECRET}\nbob,{new_secret()}\n", encoding="utf-8")
    store = MemoryStore()
    e = enrolments(store)
    count = await e.import_file(path, lambda user: hashlib.sha256(user.encode()).hexdigest()[:32], NOW)
    assert count == 2
    alice = hashlib.sha256(b"alice").hexdigest()[:32]
    assert await e.check(alice, totp(SEEDS["sha1"], NOW), NOW, commit=True)


async def test_self_enrolment_confirm(store: Store) -> None:
    """The app's first code enrols its secret; that code is spent, and an existing app is never replaced."""
    e = enrolments(store, issuer="Example Support")
    secret = new_secret()
    uri = provisioning_uri(secret, "alice@example.com", e.settings)
    assert uri.startswith("otpauth://totp/Example%20Support:alice%40example.com?secret=")
    svg = qr_svg(uri)
    assert svg.startswith("<svg") and "<script" not in svg and "href" not in svg
    code = totp(decode_secret(secret), NOW)
    assert not await e.confirm("acct", secret, f"{(int(code) + 1) % 10**6:06d}", NOW)
    assert not await e.enrolled("acct", NOW)
    assert await e.confirm("acct", secret, code, NOW)
    assert await e.enrolled("acct", NOW)
    assert not await e.check("acct", code, NOW, commit=True)  # the confirming code cannot log in too
    assert await e.check("acct", totp(decode_secret(secret), NOW + 30), NOW + 30, commit=True)
    other = new_secret()
    assert not await e.confirm("acct", other, totp(decode_secret(other), NOW), NOW)  # no replacing
    assert await e.check("acct", totp(decode_secret(secret), NOW + 60), NOW + 60, commit=True)


def test_provisioning_uri_matches_pyotp() -> None:
    s = TotpSettings(issuer="ACME")
    mine = provisioning_uri(SECRET, "alice@example.com", s)
    theirs = pyotp.TOTP(SECRET).provisioning_uri(name="alice@example.com", issuer_name="ACME")
    assert mine.split("?")[0] == theirs.split("?")[0]
    assert "<svg" in qr_svg(mine)
