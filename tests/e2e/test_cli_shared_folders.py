"""`postroom mailbox share` / `mailbox shared`: a domain's shared folders made and listed by the admin (RFC 2342 §5,
RFC 4314 rights), and the shared-folders owner's address refused by `user add` and `alias add`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from postroom import cli
from postroom.store import open_store
from postroom.store.api import AclEntry


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "postroom.toml"
    p.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return p


def run(conf: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["--config", str(conf), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_share_creates_grants_lists_and_refuses(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (("domain", "add", "example.org"), ("domain", "add", "other.test")):
        assert run(conf, capsys, *args)[0] == 0
    for address in ("alice@example.org", "bob@example.org", "eve@other.test"):
        assert run(conf, capsys, "user", "add", address, "--password", "secret-password")[0] == 0
    assert run(conf, capsys, "mailbox", "shared", "example.org")[1].splitlines()[2:] == []  # none yet

    code, out, _ = run(conf, capsys, "mailbox", "share", "Example.ORG", "Team",
                       "--grant", "Alice@example.org=lrsi", "--grant", "anyone=l")
    assert code == 0 and "Shared Folders/Team" in out
    code, out, _ = run(conf, capsys, "mailbox", "share", "example.org", "Team", "--grant", "bob@example.org=lr")
    assert code == 0 and "exists" in out  # a second share changes the ACL
    out = run(conf, capsys, "mailbox", "shared", "example.org")[1]
    assert out.splitlines()[2:] == ["Team           alice@example.org=lrsi anyone=l bob@example.org=lr"], out

    # Refused before anything is made: another domain's user, an unknown right, no "=".
    for grant, says in (("eve@other.test=lr", "not a user of example.org"), ("alice@example.org=lrQ", "unknown"),
                        ("alice@example.org", "ID=RIGHTS")):
        code, _, err = run(conf, capsys, "mailbox", "share", "example.org", "Other", "--grant", grant)
        assert code != 0 and says in err, err
    assert run(conf, capsys, "mailbox", "share", "nowhere.test", "X")[0] != 0

    # The owner's address is no address: neither a user nor an alias can take it; it is listed as no user.
    for args in (("user", "add", "shared folders@example.org", "--password", "secret-password"),
                 ("alias", "add", "shared folders@example.org", "alice@example.org")):
        assert run(conf, capsys, *args)[0] != 0
    assert "shared folders" not in run(conf, capsys, "user", "list")[1]

    async def check() -> None:
        data = conf.parent / "data"
        store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
        await store.open()
        try:
            alice = await store.get_user("alice@example.org")
            assert alice is not None
            folder = await store.get_shared_folder(alice.id, "Team")
            assert folder is not None and folder.rights == "lrsi"
            assert await store.get_acl(folder.mailbox.id) == [
                AclEntry("alice@example.org", "lrsi"), AclEntry("anyone", "l"), AclEntry("bob@example.org", "lr")]
            assert await store.get_shared_folder(alice.id, "Other") is None  # the refused shares made nothing
        finally:
            await store.close()

    asyncio.run(check())


def test_help_says_what_share_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["mailbox", "share", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # as argparse wraps it
    assert "'Shared Folders/NAME'" in out and "--grant ID=RIGHTS" in out
