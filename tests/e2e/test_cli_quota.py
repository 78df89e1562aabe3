"""Quota administration with the `postroom` command (issue 13 item 6): `user add --quota/--quota-messages`,
`user set`, `domain add/set --quota`, usage in `user list` and `domain show`; the limits set here are the ones
the store enforces."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import pytest

from postroom import cli
from postroom.store import open_store
from postroom.store.api import AppendRequest, OverQuota


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "postroom.toml"
    p.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return p


def run(conf: Path, *args: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        stdin: str | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(["--config", str(conf), *args])
    out, err = capsys.readouterr()
    return code, out, err


def append(conf: Path, address: str, size: int) -> None:
    """A message of `size` octets into the user's INBOX, through the store (OverQuota propagates)."""
    data = conf.parent / "data"

    async def go() -> None:
        store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
        await store.open()
        try:
            user = await store.get_user(address)
            assert user is not None
            box = await store.get_mailbox(user.id, "INBOX")
            assert box is not None
            head = b"Subject: x\r\n\r\n"
            await store.append(box.id, AppendRequest(head + b"y" * (size - len(head))))
        finally:
            await store.close()

    asyncio.run(go())


def test_quota_commands(conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def r(*a: str, stdin: str | None = None) -> tuple[int, str, str]:
        return run(conf, *a, capsys=capsys, monkeypatch=monkeypatch, stdin=stdin)

    assert r("domain", "add", "example.org", "--quota", "1M")[0] == 0
    code, out, _ = r("domain", "list")
    assert "1.0 MiB" in out
    code, out, _ = r("user", "add", "alice@example.org", "--quota", "10K", "--quota-messages", "3",
                     "--password-stdin", stdin="longenough\n")
    assert code == 0, out
    append(conf, "alice@example.org", 2048)
    code, out, _ = r("user", "list")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("alice@example.org"))
    assert "2.0 KiB / 10.0 KiB (20 %)" in line and "1 / 3 (33 %)" in line, out
    with pytest.raises(OverQuota):
        append(conf, "alice@example.org", 9000)  # 2048 + 9000 > 10 KiB: the limit set above holds

    code, out, _ = r("user", "set", "alice@example.org", "--quota", "20480")
    assert code == 0 and "2.0 KiB / 20.0 KiB (10 %)" in out, out
    append(conf, "alice@example.org", 9000)
    code, out, _ = r("user", "set", "alice@example.org", "--quota-messages", "0")
    assert code == 0 and "messages 2" in out and "/" not in out.split("messages")[1], out

    code, out, _ = r("domain", "show", "example.org")
    assert code == 0 and "10.8 KiB / 1.0 MiB (1 %)" in out, out
    assert r("domain", "set", "example.org", "--quota", "12K")[0] == 0
    with pytest.raises(OverQuota):
        append(conf, "alice@example.org", 2000)  # the domain's total now limits her too
    assert r("domain", "set", "example.org", "--quota", "0")[0] == 0
    append(conf, "alice@example.org", 2000)

    code, _, err = r("user", "set", "nobody@example.org", "--quota", "1")
    assert code == 1 and "no user" in err
    code, _, err = r("user", "set", "alice@example.org")
    assert code == 2 and "nothing to set" in err
    with pytest.raises(SystemExit) as exc:
        r("user", "set", "alice@example.org", "--quota", "lots")
    assert exc.value.code == 2
    assert "not a size" in capsys.readouterr().err
    code, _, err = r("domain", "set", "nowhere.test", "--quota", "1")
    assert code == 1 and "not a local domain" in err
