"""`postroom senders {list,allow,block,remove} (--user ADDR | --domain DOMAIN) [PATTERN]` (issue 12 item 7): the
rules it writes are the ones the store hands the router; bad input is one line on stderr and a non-zero status."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import pytest

from postroom import cli
from postroom.store import open_store


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "postroom.toml"
    p.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return p


def rules_of(conf: Path, address: str) -> list[tuple[str, str, str]]:
    """(scope, kind, pattern) of every rule applying to the user's mail, as the store gives the router."""
    data = conf.parent / "data"

    async def go() -> list[tuple[str, str, str]]:
        store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
        await store.open()
        try:
            user = await store.get_user(address)
            assert user is not None
            return sorted((r.scope, r.kind, r.pattern) for r in await store.sender_rules(user.id))
        finally:
            await store.close()

    return asyncio.run(go())


def test_senders_commands(conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def r(*a: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = cli.main(["--config", str(conf), *a])
        out, err = capsys.readouterr()
        return code, out, err

    assert r("domain", "add", "example.org")[0] == 0
    assert r("user", "add", "alice@example.org", "--password-stdin", stdin="longenough\n")[0] == 0
    code, out, _ = r("senders", "block", "--user", "Alice@Example.org", "Pest@Bad.Example")
    assert code == 0 and "alice@example.org: block pest@bad.example" in out, out
    code, out, _ = r("senders", "allow", "--user", "alice@example.org", "@.friends.example")
    assert code == 0 and "authenticate" in out  # says when an allow counts
    assert r("senders", "block", "--domain", "example.org", "@spam.example")[0] == 0
    code, out, _ = r("senders", "list", "--user", "alice@example.org")
    assert code == 0 and out.splitlines()[0].split() == ["kind", "pattern"]
    assert [line.split() for line in out.splitlines()[2:]] == [["allow", "@.friends.example"],
                                                               ["block", "pest@bad.example"]]
    assert rules_of(conf, "alice@example.org") == [("alice@example.org", "allow", "@.friends.example"),
                                                   ("alice@example.org", "block", "pest@bad.example"),
                                                   ("example.org", "block", "@spam.example")]
    code, out, _ = r("senders", "remove", "--user", "alice@example.org", "PEST@bad.example")
    assert code == 0 and "removed" in out
    code, _, err = r("senders", "remove", "--user", "alice@example.org", "pest@bad.example")
    assert code == 1 and err.startswith("postroom: ") and "no sender rule" in err
    code, out, _ = r("senders", "list", "--domain", "example.org")
    assert "@spam.example" in out
    # Bad input: one line, non-zero, nothing written.
    code, _, err = r("senders", "block", "--user", "alice@example.org", "not a pattern")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    code, _, err = r("senders", "block", "--user", "nobody@example.org", "a@b.example")
    assert code == 1 and "no such user" in err
    code, _, err = r("senders", "list", "--domain", "elsewhere.example")
    assert code == 1 and "no such domain" in err
    with pytest.raises(SystemExit) as exc:
        r("senders", "block", "a@b.example")  # a scope is required
    assert exc.value.code == 2
    assert rules_of(conf, "alice@example.org") == [("alice@example.org", "allow", "@.friends.example"),
                                                   ("example.org", "block", "@spam.example")]


def test_senders_help_explains() -> None:
    proc = subprocess.run([sys.executable, "-m", "postroom.cli", "senders", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "@.example.com" in text and "550 5.7.1" in text and "authenticate" in text and "Junk" in text
