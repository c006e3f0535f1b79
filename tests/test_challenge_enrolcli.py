"""``guard totp import|del``: enrolments from a file reach a running guard, with either store.

Memory store: the command goes through the running guard's admin API.  Redis:
it writes the store directly.  Either way the next login of an imported account
is challenged through its authenticator app (a code from pyotp passes), and
after ``del`` it is back to e-mailed codes.  The command prints counts only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyotp
import pytest

from guard import cli
from guard.config import load_config_text
from tests.redisserver import free_port
from tests.test_challenge_channels import Mailbox
from tests.test_challenge_e2e import ALICE, Browser, code_in, config_text, form_fields, legacy, mailbox, started

__all__ = ["legacy", "mailbox"]  # fixtures, used here

SECRET = pyotp.random_base32(32)
TOKEN = "enrol-cli-token-0123456789abcdef"


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_import_then_delete_through_the_cli(
    tmp_path: Path, legacy: int, mailbox: tuple[Mailbox, int], backend: str, request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    box, smtp = mailbox
    extra = ""
    if backend == "redis":
        url: str = request.getfixturevalue("redis_url")
        extra = f"store: {{backend: redis, url: '{url}'}}\nsecret_key: test-fingerprint-key-0123456789\n"
    text = config_text(tmp_path, legacy, smtp, extra, admin=f"{{listen: '127.0.0.1:{free_port()}', token: {TOKEN}}}")
    config_file = tmp_path / "guard.yaml"
    config_file.write_text(text)
    secrets_file = tmp_path / "totp.csv"
    secrets_file.write_text(f"username,secret\n# exported from the old service\n{ALICE.login},{SECRET}\n")
    server = await started(load_config_text(text, env={}))
    base = f"http://127.0.0.1:{server.public_port}"
    try:
        rc = await asyncio.to_thread(cli.main, ["totp", "import", str(secrets_file), "-c", str(config_file)])
        out = capsys.readouterr()
        assert rc == 0 and out.out == "enrolled 1 account(s)\n"
        assert ALICE.login not in out.out + out.err and SECRET not in out.out + out.err

        b = Browser(base)
        _, _, page, _ = await b.post("/login", {"username": ALICE.login, "password": ALICE.password})
        assert "authenticator app" in page
        status, headers, _, _ = await b.post(
            "/.loginguard/challenge", {**form_fields(page), "code": pyotp.TOTP(SECRET).now(), "op": "verify"}
        )
        await b.close()
        assert status == 302 and headers["Location"] == "/contact"
        await server._challenges.drain()
        assert box.messages == []  # the app, not the mailbox

        rc = await asyncio.to_thread(cli.main, ["totp", "del", ALICE.login, "-c", str(config_file)])
        assert rc == 0 and capsys.readouterr().out == "removed 1 enrolment(s)\n"
        b = Browser(base)
        _, _, page, _ = await b.post("/login", {"username": ALICE.login, "password": ALICE.password})
        await b.close()
        await server._challenges.drain()
        assert "authenticator app" not in page and len(box.messages) == 1 and code_in(box)
    finally:
        await server.stop(1)


async def test_a_bad_file_names_its_line_never_its_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = config_text(tmp_path, 9, 25)  # no guard runs: the file is refused before anything is sent
    config_file = tmp_path / "guard.yaml"
    config_file.write_text(text)
    bad = tmp_path / "totp.csv"
    bad.write_text(f"{ALICE.login},{SECRET}\n{ALICE.login},NOT-BASE32!\n")
    rc = await asyncio.to_thread(cli.main, ["totp", "import", str(bad), "-c", str(config_file)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{bad}:2" in err and ALICE.login not in err and "NOT-BASE32" not in err
