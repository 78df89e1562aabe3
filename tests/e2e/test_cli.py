"""The `postroom` admin commands against a real store in a temporary data folder."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import pytest

from postroom import cli
from postroom.auth.passwords import verify_password
from postroom.store import open_store


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "postroom.toml"
    p.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return p


def run(conf: Path, *args: str, stdin: str | None = None, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(["--config", str(conf), *args])
    out, err = capsys.readouterr()
    return code, out, err


def user_hash(conf: Path, address: str) -> str:
    data = conf.parent / "data"

    async def get() -> str:
        store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
        await store.open()
        try:
            user = await store.get_user(address)
            assert user is not None
            return user.password_hash
        finally:
            await store.close()

    return asyncio.run(get())


def test_domain_user_alias_list_lifecycle(conf: Path, capsys, monkeypatch) -> None:
    r = lambda *a, stdin=None: run(conf, *a, stdin=stdin, capsys=capsys, monkeypatch=monkeypatch)  # noqa: E731
    assert r("domain", "add", "Example.ORG")[0] == 0
    code, out, _ = r("domain", "list")
    assert code == 0 and "example.org" in out

    code, _, err = r("user", "add", "alice@nowhere.test", "--password-stdin", stdin="longenough\n")
    assert code == 1 and "domain add nowhere.test" in err

    code, out, _ = r("user", "add", "Alice@Example.org", "--password-stdin", stdin="longenough\n")
    assert code == 0 and "alice@example.org" in out
    assert "longenough" not in out
    assert verify_password(user_hash(conf, "alice@example.org"), "longenough")

    code, _, err = r("user", "add", "alice@example.org", "--password-stdin", stdin="longenough\n")
    assert code == 1 and "already exists" in err

    code, _, err = r("user", "add", "bob@example.org", "--password-stdin", stdin="short\n")
    assert code == 2 and "at least 8" in err

    assert r("user", "passwd", "alice@example.org", "--password-stdin", stdin="another-one\n")[0] == 0
    assert verify_password(user_hash(conf, "alice@example.org"), "another-one")

    code, out, _ = r("user", "list")
    assert "alice@example.org" in out

    assert r("alias", "add", "postmaster@example.org", "alice@example.org", "ext@remote.test")[0] == 0
    assert r("alias", "add", "@example.org", "alice@example.org")[0] == 0
    code, out, _ = r("alias", "list")
    assert "postmaster@example.org" in out and "ext@remote.test" in out and "@example.org" in out
    code, _, err = r("alias", "add", "x@remote.test", "alice@example.org")
    assert code == 1 and "not a local domain" in err
    assert r("alias", "remove", "postmaster@example.org", "ext@remote.test")[0] == 0
    code, out, _ = r("alias", "list")
    assert "ext@remote.test" not in out and "postmaster@example.org" in out

    code, out, _ = r("list", "create", "team@example.org", "--owner", "alice@example.org",
                     "--policy", "moderated", "--member", "bob@remote.test")
    assert code == 0 and "team-bounces@example.org" in out
    assert r("list", "add", "team@example.org", "carol@remote.test")[0] == 0
    code, out, _ = r("list", "show", "team@example.org")
    assert "moderated" in out and "bob@remote.test" in out and "carol@remote.test" in out
    assert r("list", "remove", "team@example.org", "bob@remote.test")[0] == 0
    assert r("list", "policy", "team@example.org", "open")[0] == 0
    code, out, _ = r("list", "show", "team@example.org")
    assert "bob@remote.test" not in out and "open" in out
    code, out, _ = r("list", "all")
    assert "team@example.org" in out
    assert r("list", "delete", "team@example.org", "--yes")[0] == 0

    code, _, err = r("domain", "remove", "example.org", "--yes")
    assert code == 1  # users and aliases remain
    assert r("alias", "remove", "postmaster@example.org")[0] == 0
    assert r("alias", "remove", "@example.org")[0] == 0
    assert r("user", "remove", "alice@example.org", "--yes")[0] == 0
    assert r("domain", "remove", "example.org", "--yes")[0] == 0


def test_domain_list_and_show_say_where_postmaster_mail_goes(conf: Path, capsys, monkeypatch) -> None:
    r = lambda *a, stdin=None: run(conf, *a, stdin=stdin, capsys=capsys, monkeypatch=monkeypatch)  # noqa: E731
    assert r("domain", "add", "example.org")[0] == 0
    code, out, _ = r("domain", "show", "example.org")
    assert code == 0 and "postmaster nowhere yet: no user on this server" in out
    assert r("user", "add", "alice@example.org", "--password-stdin", stdin="longenough\n")[0] == 0
    assert r("domain", "add", "example.test")[0] == 0
    code, out, _ = r("domain", "list")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert rows["example.org"].endswith("alice@example.org (first user)")
    assert rows["example.test"].endswith("alice@example.org (administrator)")
    assert r("alias", "add", "postmaster@example.test", "ops@remote.test")[0] == 0
    code, out, _ = r("domain", "show", "example.test")
    assert "postmaster ops@remote.test (alias)" in out
    code, _, err = r("domain", "show", "nowhere.test")
    assert code == 1 and "domain add nowhere.test" in err


def test_quoted_local_parts_in_user_alias_and_list(conf: Path, capsys, monkeypatch) -> None:
    # RFC 5321 §4.1.2: one spelling per mailbox, the one SMTP resolves ('"john"' is 'john'; only needed quotes).
    r = lambda *a, stdin=None: run(conf, *a, stdin=stdin, capsys=capsys, monkeypatch=monkeypatch)  # noqa: E731
    assert r("domain", "add", "example.org")[0] == 0
    code, out, _ = r("user", "add", '"John Doe"@Example.org', "--password-stdin", stdin="longenough\n")
    assert code == 0 and 'user "john doe"@example.org added' in out
    code, _, err = r("user", "add", '"john\\ doe"@example.org', "--password-stdin", stdin="longenough\n")
    assert code == 1 and "already exists" in err
    code, out, _ = r("user", "add", '"plain"@example.org', "--password-stdin", stdin="longenough\n")
    assert code == 0 and "user plain@example.org added" in out
    code, out, _ = r("alias", "add", '"sales team"@example.org', '"john doe"@example.org', '"ext one"@far.test')
    assert code == 0 and 'alias "sales team"@example.org -> "john doe"@example.org, "ext one"@far.test' in out
    code, out, _ = r("list", "create", '"the list"@example.org', "--owner", '"john doe"@example.org')
    assert code == 0 and '"the list"@example.org' in out
    for bad in ('"unterminated@example.org', '"a"b@example.org', "john doe@example.org", '"a\tb"@example.org'):
        code, _, err = r("user", "add", bad, "--password-stdin", stdin="longenough\n")
        assert code == 2 and err.startswith("postroom: "), bad
        assert "Traceback" not in err


def test_bad_input_gets_clear_errors(conf: Path, capsys, monkeypatch) -> None:
    r = lambda *a: run(conf, *a, capsys=capsys, monkeypatch=monkeypatch)  # noqa: E731
    code, _, err = r("domain", "add", "bad_domain!")
    assert code == 2 and "not a domain name" in err
    code, _, err = r("user", "remove", "noat")
    assert code == 2 and "not an address" in err
    code, _, err = r("user", "passwd", "nobody@example.org", "--password", "whatever123")
    assert code == 1 and "no user" in err


def test_no_password_source_without_tty(conf: Path, capsys, monkeypatch) -> None:
    r = lambda *a: run(conf, *a, stdin="", capsys=capsys, monkeypatch=monkeypatch)  # noqa: E731
    assert r("domain", "add", "example.org")[0] == 0
    code, _, err = r("user", "add", "a@example.org")
    assert code == 2 and "--password-stdin" in err


def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nrecipients = -1\n")
    proc = subprocess.run([sys.executable, "-m", "postroom.cli", "--config", str(bad), "serve"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "limits.recipients" in proc.stderr


def test_console_script_help_and_check(conf: Path) -> None:
    exe = Path(sys.executable).with_name("postroom")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "serve" in proc.stdout and "import" in proc.stdout
    proc = subprocess.run([str(exe), "--config", str(conf), "check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "OK" in proc.stdout and "imaps" in proc.stdout


def test_alias_targets_list_owner_and_members_keep_their_case(conf: Path, capsys, monkeypatch) -> None:
    # RFC 5321 §2.4: a local part sent onward keeps its case; local names are still lower-cased keys.
    r = lambda *a, stdin=None: run(conf, *a, stdin=stdin, capsys=capsys, monkeypatch=monkeypatch)  # noqa: E731
    assert r("domain", "add", "example.test")[0] == 0
    code, out, _ = r("alias", "add", "Fwd2@Example.test", "Ext.User@Remote.test")
    assert code == 0 and "alias fwd2@example.test -> Ext.User@remote.test" in out
    code, out, _ = r("alias", "list")
    assert "Ext.User@remote.test" in out
    code, out, _ = r("list", "create", "Team@example.test", "--owner", "The.Owner@remote.test")
    assert code == 0 and "list team@example.test created (owner The.Owner@remote.test" in out
    assert r("list", "add", "team@example.test", "Big.Member@remote.test")[0] == 0
    code, _, err = r("list", "add", "team@example.test", "big.member@remote.test")
    assert code == 1 and "Big.Member@remote.test is already a member" in err
    code, out, _ = r("list", "show", "team@example.test")
    assert "  Big.Member@remote.test" in out and "big.member" not in out
    assert r("list", "remove", "team@example.test", "BIG.MEMBER@remote.test")[0] == 0
    code, out, _ = r("list", "show", "team@example.test")
    assert "members  0" in out


def test_aliases_shadowing_mailboxes_are_warned_and_postmaster_shown_as_routed(conf: Path, capsys,
                                                                              monkeypatch) -> None:
    # Aliases win over mailboxes (as Postfix's virtual_alias_maps): allowed, but said out loud.
    r = lambda *a, stdin=None: run(conf, *a, stdin=stdin, capsys=capsys, monkeypatch=monkeypatch)  # noqa: E731
    for d in ("example.test", "empty.test", "d2.test"):
        assert r("domain", "add", d)[0] == 0
    assert r("user", "add", "bob@example.test", "--password-stdin", stdin="longenough\n")[0] == 0
    code, _, err = r("alias", "add", "postmaster@empty.test", "bob@example.test")
    assert code == 0 and "warning" not in err  # no mailbox there yet: nothing shadowed
    code, out, err = r("user", "add", "PostMaster@empty.test", "--password-stdin", stdin="longenough\n")
    assert code == 0 and "user postmaster@empty.test added" in out
    assert ("warning: the alias postmaster@empty.test takes the mail of the user postmaster@empty.test: it goes "
            "to bob@example.test instead") in err
    assert "postroom alias remove postmaster@empty.test" in err
    code, _, err = r("alias", "add", "bob@example.test", "u1@d2.test")
    assert code == 0
    assert ("warning: the alias bob@example.test takes the mail of the user bob@example.test: it goes to "
            "nowhere (no target exists: senders are told 550 5.1.1) instead") in err
    assert r("user", "add", "u1@d2.test", "--password-stdin", stdin="longenough\n")[0] == 0
    code, _, err = r("alias", "add", "bob@example.test", "u1@d2.test")  # the same pair again: warned again
    assert ("warning: the alias bob@example.test takes the mail of the user bob@example.test: it goes to "
            "u1@d2.test instead") in err
    code, out, _ = r("domain", "list")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    # postmaster@example.test has no alias: the implicit route is bob's INBOX, whose own mail goes to u1.
    assert rows["example.test"].endswith("bob@example.test (first user; its INBOX, though an alias sends "
                                         "bob@example.test's own mail to u1@d2.test)")
    # postmaster@empty.test follows its alias to the end (bob's alias too), not the shadowed mailbox.
    assert rows["empty.test"].endswith("u1@d2.test (alias; the alias postmaster@empty.test takes the mail "
                                       "of the user postmaster@empty.test: it goes to u1@d2.test instead)")
    code, out, _ = r("domain", "show", "empty.test")
    assert "postmaster u1@d2.test (alias; the alias postmaster@empty.test takes the mail" in out
    # An alias that names the address itself keeps the mailbox's copy: no warning.
    code, _, err = r("alias", "add", "bob@example.test", "bob@example.test")
    assert code == 0 and "warning" not in err
    code, out, _ = r("domain", "list")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert rows["example.test"].endswith("bob@example.test (first user)")
