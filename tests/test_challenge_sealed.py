"""guard.challenge.keys and .sealed: AES-GCM blobs bound to purpose and hold, key rotation, held messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guard.challenge.keys import KeyRing, b64d, b64e, new_key
from guard.challenge.sealed import HeldMessage, Sealer, SealError
from guard.challenge.settings import ChallengeSettings, keys_from_env

K1, K2, K3 = (bytes([i]) * 32 for i in (1, 2, 3))


def sealer(*keys: bytes) -> Sealer:
    return Sealer(KeyRing(list(keys)))


def test_round_trip_and_fresh_nonce() -> None:
    s = sealer(K1)
    a = s.seal("hold", "id1", b"secret cookie")
    b = s.seal("hold", "id1", b"secret cookie")
    assert a != b  # random nonce per seal
    assert b"secret" not in a
    assert s.open("hold", "id1", a) == b"secret cookie"
    assert len(a) == 1 + 4 + 12 + len(b"secret cookie") + 16


@pytest.mark.parametrize(("purpose", "bind"), [("hold", "id2"), ("totp", "id1"), ("hol", "did1")])
def test_blob_is_bound_to_purpose_and_hold(purpose: str, bind: str) -> None:
    s = sealer(K1)
    blob = s.seal("hold", "id1", b"x")
    with pytest.raises(SealError):
        s.open(purpose, bind, blob)


@pytest.mark.parametrize("where", [0, 1, 5, 17, -1, -17])
def test_any_flipped_byte_is_detected(where: int) -> None:
    s = sealer(K1)
    blob = bytearray(s.seal("hold", "id", b"payload bytes"))
    blob[where] ^= 0x01
    with pytest.raises(SealError):
        s.open("hold", "id", bytes(blob))


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x02" + b"\x00" * 40, b"\x01" + b"\x00" * 20])
def test_garbage_is_refused(blob: bytes) -> None:
    with pytest.raises(SealError):
        sealer(K1).open("hold", "id", blob)


def test_rotation_old_blobs_open_new_blobs_use_the_first_key() -> None:
    old = sealer(K1)
    blob = old.seal("hold", "id", b"v")
    rotated = sealer(K2, K1)
    assert rotated.open("hold", "id", blob) == b"v"
    assert not rotated.current_kid(blob)
    new_blob = rotated.seal("hold", "id", b"v")
    assert rotated.current_kid(new_blob)
    with pytest.raises(SealError):  # the old ring does not know K2
        old.open("hold", "id", new_blob)
    with pytest.raises(SealError):  # K1 retired: its blobs no longer open
        sealer(K2, K3).open("hold", "id", blob)


def test_key_ring_macs_rotate_and_separate_purposes() -> None:
    ring = KeyRing([K1])
    token = ring.sign(b"csrf", "hold", "browser")
    assert ring.verify(b"csrf", token, "hold", "browser")
    assert not ring.verify(b"device", token, "hold", "browser")
    assert not ring.verify(b"csrf", token, "hol", "dbrowser")  # length-prefixed parts
    assert KeyRing([K2, K1]).verify(b"csrf", token, "hold", "browser")
    assert not KeyRing([K2]).verify(b"csrf", token, "hold", "browser")
    assert not ring.verify(b"csrf", b"", "hold", "browser")


def test_key_ring_refuses_bad_keys() -> None:
    with pytest.raises(ValueError, match="at least one"):
        KeyRing([])
    with pytest.raises(ValueError, match="32 bytes"):
        KeyRing([b"short"])
    with pytest.raises(ValueError, match="twice"):
        KeyRing([K1, K1])


def test_settings_keys_from_env_and_validation() -> None:
    k1, k2 = new_key(), new_key()
    cfg = ChallengeSettings.model_validate(keys_from_env({}, {"GUARD_CHALLENGE_KEYS": f"{k1}, {k2}"}))
    assert [k.get_secret_value() for k in cfg.keys] == [k1, k2]
    assert k1 not in repr(cfg)  # SecretStr: keys never in reprs or logs
    with pytest.raises(ValidationError) as err:
        ChallengeSettings.model_validate({"keys": ["bm90IGEga2V5"]})
    assert "32 bytes" in str(err.value) and "bm90IGEga2V5" not in str(err.value)
    with pytest.raises(ValidationError):
        ChallengeSettings.model_validate({"keys": []})
    with pytest.raises(ValidationError):
        ChallengeSettings.model_validate({"keys": [k1], "unknown": 1})
    with pytest.raises(ValidationError, match="code_ttl"):
        ChallengeSettings.model_validate({"keys": [k1], "code_ttl": "20m", "hold_ttl": "10m"})
    with pytest.raises(ValidationError):
        ChallengeSettings.model_validate({"keys": [k1], "restart_path": "//evil.example/"})


def test_b64_helpers_never_raise_on_client_input() -> None:
    assert b64d(b64e(b"\x00\xff")) == b"\x00\xff"
    for junk in ["", "!!", "a b", "é", "====", "A" * 5000, "a+b/"]:
        assert b64d(junk) is None


def test_held_response_keeps_repeated_headers_and_bytes() -> None:
    msg = HeldMessage.response(
        302,
        [
            ("Location", "/home"),
            ("Set-Cookie", "a=1; HttpOnly"),
            ("Set-Cookie", "b=2"),
            ("X-Odd", "caf\udce9"),
        ],
        b"\x00body\xff",
        cap=1024,
    )
    data = msg.encode()
    back, used = HeldMessage.decode(data + bytes(10))
    assert back == msg and used == len(data)
    assert [v for k, v in back.headers if k == "Set-Cookie"] == ["a=1; HttpOnly", "b=2"]


def test_held_response_over_cap_drops_body_not_the_hold() -> None:
    msg = HeldMessage.response(200, [], b"x" * 2000, cap=1024)
    assert msg.body == b"" and msg.body_dropped


def test_held_request() -> None:
    msg = HeldMessage.request(
        "POST",
        "/login?next=%2F",
        [("Content-Type", "application/x-www-form-urlencoded")],
        b"user=a&password=b",
        cap=1024,
    )
    back, _ = HeldMessage.decode(msg.encode())
    assert back.is_request and back.method == "POST" and back.body == b"user=a&password=b"
    with pytest.raises(ValueError):
        HeldMessage.request("POST", "/login", [], b"x" * 2000, cap=1024)
    with pytest.raises(ValueError):
        HeldMessage.request("POST", "http://evil/", [], b"", cap=1024)


@pytest.mark.parametrize(
    "data", [b"", b"LGM1", b"XXXX\x00\x00\xc8\x00", HeldMessage(status=200).encode()[:-3]]
)
def test_held_message_decode_refuses_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        HeldMessage.decode(data)


header = st.tuples(st.text(max_size=20), st.text(max_size=60))


@settings(max_examples=60, deadline=None)
@given(st.integers(100, 599), st.lists(header, max_size=8), st.binary(max_size=300))
def test_held_message_round_trip_property(status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    msg = HeldMessage.response(status, headers, body, cap=4096)
    back, _ = HeldMessage.decode(sealer(K1).open("hold", "h", sealer(K1).seal("hold", "h", msg.encode())))
    assert back == msg
