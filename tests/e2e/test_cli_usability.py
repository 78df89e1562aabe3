"""What a new user tripped over in the `postroom` command (issue 13, item 8): where the configuration is found,
commands that only read never making a store, one line and an exit status for every failure, incremental
export and duplicate-free import, and confirmation before what cannot be undone.

The console script runs as a user runs it (a subprocess, in a directory of the test's own, with its own
environment) wherever the directory or the terminal matters; the rest calls `cli.main` in-process, where an
uncaught exception (a traceback for the user) fails the test."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from postroom import cli
from postroom import config as config_mod

EXE = str(Path(sys.executable).with_name("postroom"))
MBOX = (b"From a@far.test Tue Nov 14 22:13:20 2023\nFrom: a@far.test\nSubject: one\n\nBody one.\n\n"
        b"From b@far.test Wed Nov 15 22:13:20 2023\nFrom: b@far.test\nSubject: two\n\nBody two.\n\n")


def sh(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str = "",
       ) -> subprocess.CompletedProcess[str]:
    """The console script, as a user runs it: no POSTROOM_CONFIG unless `env` sets one."""
    base = {k: v for k, v in os.environ.items() if k != config_mod.ENV_VAR}
    return subprocess.run([EXE, *args], cwd=cwd, env={**base, **(env or {})}, input=stdin, capture_output=True,
                          text=True, timeout=120)


def one_line(err: str) -> str:
    """stderr must be exactly one line starting 'postroom: ' (no traceback); returns it."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("postroom: "), err
    return lines[0]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "postroom.toml"
    p.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return p


class Cli:
    """`cli.main` in-process with a configuration file; stdin is not a terminal unless `tty` is given."""

    def __init__(self, conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.conf, self.capsys, self.monkeypatch = conf, capsys, monkeypatch

    def __call__(self, *args: str, stdin: str = "", tty: bool = False) -> tuple[int, str, str]:
        fake = io.TextIOWrapper(io.BytesIO(stdin.encode()))  # has .buffer, for sendmail
        fake.isatty = lambda: tty  # type: ignore[method-assign]
        self.monkeypatch.setattr(sys, "stdin", fake)
        code = cli.main(["--config", str(self.conf), *args])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def r(conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(conf, capsys, monkeypatch)


# --------------------------------------------------------------------------------------------------------
# Item 1: the configuration is found as people expect; reading commands never make a store


READ_ONLY = [
    ("user", "list"), ("domain", "list"), ("domain", "show", "example.org"), ("alias", "list"),
    ("list", "all"), ("list", "show", "team@example.org"), ("queue", "list"), ("queue", "show", "1"),
    ("dns", "example.org"), ("mailbox", "shared", "example.org"), ("index",),
    ("export", "--user", "a@example.org", "--format", "mbox", "out.mbox"),
    ("import", "--user", "a@example.org", "in.mbox"),
    ("user", "remove", "a@example.org", "--yes"), ("sendmail", "a@example.org"),
]


@pytest.mark.parametrize("argv", READ_ONLY, ids=lambda a: " ".join(a[:2]))
def test_commands_never_make_a_store_where_there_is_none(tmp_path: Path, argv: tuple[str, ...]) -> None:
    # Run from a directory with no configuration: the command says where it looked and leaves nothing behind.
    proc = sh(*argv, cwd=tmp_path, stdin="Subject: x\n\nx\n")
    assert proc.returncode == 2, proc
    line = one_line(proc.stderr)
    assert f"no Postroom store at {tmp_path.resolve() / 'postroom-data' / 'postroom.db'}" in line
    assert "$POSTROOM_CONFIG (not set)" in line and str(tmp_path.resolve() / "postroom.toml") in line
    assert config_mod.SYSTEM_CONFIG in line and "nothing was created" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_check_says_the_store_is_not_made_and_does_not_make_it(tmp_path: Path) -> None:
    proc = sh("check", cwd=tmp_path)
    assert proc.returncode == 0, proc
    assert "built-in defaults (no configuration found" in proc.stdout and "not made yet" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_discovery_order_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    # ./postroom.toml with a relative data_dir: the data lives beside the file, wherever commands run from.
    site, elsewhere, other = tmp_path / "site", tmp_path / "elsewhere", tmp_path / "other"
    for d in (site, elsewhere, other):
        d.mkdir()
    (site / "postroom.toml").write_text('[server]\ndata_dir = "data"\n')
    (other / "other.toml").write_text('[server]\ndata_dir = "otherdata"\n')
    proc = sh("domain", "add", "example.org", cwd=site)
    assert proc.returncode == 0, proc
    assert f"making a new store at {site / 'data' / 'postroom.db'}" in proc.stderr
    assert f"the configuration {site / 'postroom.toml'} (from ./postroom.toml)" in proc.stderr
    # $POSTROOM_CONFIG from another directory: the same store, and no ./postroom-data made there.
    env = {config_mod.ENV_VAR: str(site / "postroom.toml")}
    proc = sh("domain", "list", cwd=elsewhere, env=env)
    assert proc.returncode == 0 and "example.org" in proc.stdout, proc
    proc = sh("check", cwd=elsewhere, env=env)
    assert f"data_dir  {site / 'data'}" in proc.stdout and "(from $POSTROOM_CONFIG)" in proc.stdout
    assert list(elsewhere.iterdir()) == []
    # --config comes before $POSTROOM_CONFIG, which comes before ./postroom.toml.
    proc = sh("--config", str(other / "other.toml"), "check", cwd=site, env=env)
    assert f"data_dir  {other / 'otherdata'}" in proc.stdout
    proc = sh("check", cwd=other, env=env)
    assert f"data_dir  {site / 'data'}" in proc.stdout
    # A variable naming a file that is not there: one line naming the file and the variable.
    proc = sh("user", "list", cwd=elsewhere, env={config_mod.ENV_VAR: str(elsewhere / "gone.toml")})
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert str(elsewhere / "gone.toml") in line and "named by $POSTROOM_CONFIG" in line
    # The order is in --help.
    proc = sh("--help", cwd=elsewhere)
    assert "$POSTROOM_CONFIG" in proc.stdout and "./postroom.toml" in proc.stdout
    assert "/etc/postroom/postroom.toml" in proc.stdout


def test_system_configuration_is_the_last_place_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc" / "postroom.toml"
    system.parent.mkdir()
    system.write_text('[server]\ndata_dir = "/var/lib/postroom-test"\n')
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", str(system))
    empty = tmp_path / "cwd"
    empty.mkdir()
    found = config_mod.discover(None, environ={}, cwd=empty)
    assert (found.path, found.how) == (system, str(system))
    assert config_mod.load(found.path, how=found.how).data_path == Path("/var/lib/postroom-test")
    (empty / "postroom.toml").write_text("")
    assert config_mod.discover(None, environ={}, cwd=empty).path == empty / "postroom.toml"
    assert config_mod.discover(None, environ={"POSTROOM_CONFIG": "/x.toml"}, cwd=empty).path == Path("/x.toml")
    assert config_mod.discover("y.toml", environ={"POSTROOM_CONFIG": "/x.toml"}, cwd=empty).path == Path("y.toml")
    system.unlink()
    (empty / "postroom.toml").unlink()
    none = config_mod.discover(None, environ={}, cwd=empty)
    assert none.path is None and "built-in defaults" in none.describe()


# --------------------------------------------------------------------------------------------------------
# Item 2: one line and an exit status, never a traceback


def test_bad_input_sweep_one_line_each(r: Cli, tmp_path: Path) -> None:
    assert r("domain", "add", "example.org")[0] == 0
    assert r("user", "add", "a@example.org", "--password-stdin", stdin="longenough\n")[0] == 0
    unreadable = tmp_path / "secret.mbox"
    unreadable.write_bytes(MBOX)
    unreadable.chmod(0)
    folder_file = tmp_path / "afile"
    folder_file.write_text("x")
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("import", "--user", "a@example.org", str(tmp_path / "missing.mbox")), 1, "no such file"),
        (("import", "--user", "nobody@example.org", str(tmp_path / "missing.mbox")), 1, "no user"),
        (("import", "--user", "a@example.org", "--format", "maildir", str(folder_file)), 1, "not a Maildir"),
        (("export", "--user", "a@example.org", "--format", "mbox", "--mailbox", "Nope", str(tmp_path / "o")), 1,
         "no such mailbox: Nope"),
        (("export", "--user", "a@example.org", "--format", "maildir", str(folder_file / "sub")), 1, "afile"),
        (("export", "--user", "ghost@example.org", "--format", "mbox", str(tmp_path / "o")), 1, "no user"),
        (("user", "remove", "ghost@example.org", "--yes"), 1, "no user ghost@example.org"),
        (("user", "passwd", "ghost@example.org", "--password", "whatever123"), 1, "no user"),
        (("user", "list", "--domain", "bad_domain!"), 2, "not a domain name"),
        (("domain", "remove", "nowhere.test", "--yes"), 1, "not a local domain"),
        (("domain", "show", "nowhere.test"), 1, "not a local domain"),
        (("domain", "dkim", "nowhere.test"), 1, "not a local domain"),
        (("dns", "nowhere.test"), 1, "not a local domain"),
        (("alias", "add", "x@nowhere.test", "a@example.org"), 1, "not a local domain"),
        (("alias", "remove", "nothing@example.org"), 1, "nothing@example.org"),
        (("list", "show", "nolist@example.org"), 1, "no list"),
        (("list", "delete", "nolist@example.org", "--yes"), 1, "no list"),
        (("list", "add", "nolist@example.org", "m@far.test"), 1, "nolist@example.org"),
        (("list", "create", "l@nowhere.test", "--owner", "a@example.org"), 1, "not a local domain"),
        (("mailbox", "share", "example.org", "T", "--grant", "ghost@example.org=lr"), 1, "not a user"),
        (("mailbox", "share", "example.org", "T", "--grant", "a@example.org=Q"), 1, "unknown rights"),
        (("queue", "show", "99"), 1, "no queue entry 99"),
        (("queue", "delete", "99", "--yes"), 1, "no queue entry 99"),
        (("sendmail", "-f", "a@example.org"), 2, "no recipient"),
    ]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        cases.append((("import", "--user", "a@example.org", str(unreadable)), 1, "Permission denied"))
    for argv, code, fragment in cases:
        got, _, err = r(*argv, stdin="Subject: x\n\nx\n")
        assert got == code, (argv, err)
        assert fragment.lower() in one_line(err).lower(), (argv, err)


def test_export_into_a_closed_pipe_ends_with_one_line(conf: Path, tmp_path: Path) -> None:
    env = {config_mod.ENV_VAR: str(conf)}
    assert sh("domain", "add", "example.org", cwd=tmp_path, env=env).returncode == 0
    assert sh("user", "add", "a@example.org", "--password-stdin", cwd=tmp_path, env=env,
              stdin="longenough\n").returncode == 0
    big = tmp_path / "big.mbox"
    body = b"x" * 70 + b"\n"
    big.write_bytes(b"".join(b"From a@far.test Tue Nov 14 22:13:20 2023\nSubject: %d\n\n" % i + body * 100 + b"\n"
                             for i in range(400)))  # ~2.8 MB: far more than a pipe buffer holds
    assert sh("import", "--user", "a@example.org", str(big), cwd=tmp_path, env=env).returncode == 0
    proc = subprocess.run(f"'{EXE}' export --user a@example.org --format mbox - | head -c 100 >/dev/null; "
                          "echo \"status=${PIPESTATUS[0]}\" >&2", shell=True, executable="/bin/bash", cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    assert lines[-1] == "status=141", proc.stderr
    # The progress display's last line (stderr: "INBOX: N messages, ...") may come first; then the one error line.
    assert [line for line in lines[:-1] if not line.startswith("INBOX: ")] == [
        "postroom: stopped: the output was closed before the end (broken pipe)"], proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_small_output_into_a_closed_pipe_and_a_config_that_is_not_text(conf: Path, tmp_path: Path) -> None:
    # Output small enough to sit in stdout's buffer until exit: the closed pipe is still one line, status 141.
    env = {config_mod.ENV_VAR: str(conf)}
    assert sh("domain", "add", "example.org", cwd=tmp_path, env=env).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes anything
    try:
        proc = subprocess.run([EXE, "domain", "list"], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path, env={**os.environ, **env}, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141
    assert one_line(proc.stderr) == "postroom: stopped: the output was closed before the end (broken pipe)"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[server]\n")
    proc = sh("--config", str(binary), "check", cwd=tmp_path)
    assert proc.returncode == 2 and "not UTF-8" in one_line(proc.stderr)
    proc = sh("--config", str(tmp_path), "check", cwd=tmp_path)
    assert proc.returncode == 2 and "is a folder" in one_line(proc.stderr)


# --------------------------------------------------------------------------------------------------------
# Item 3: export twice, import twice


def test_export_twice_and_import_twice_through_the_command(r: Cli, tmp_path: Path) -> None:
    assert r("domain", "add", "example.org")[0] == 0
    assert r("user", "add", "a@example.org", "--password-stdin", stdin="longenough\n")[0] == 0
    src = tmp_path / "in.mbox"
    src.write_bytes(MBOX)
    code, out, _ = r("import", "--user", "a@example.org", str(src))
    assert code == 0 and "imported 2 messages" in out
    code, out, _ = r("import", "--user", "a@example.org", str(src))
    assert code == 0 and "imported 0 messages" in out and "left out 2 messages the mailbox already holds" in out
    code, out, _ = r("import", "--user", "a@example.org", "--duplicates", str(src))
    assert code == 0 and "imported 2 messages" in out
    md = tmp_path / "backup"
    code, out, _ = r("export", "--user", "a@example.org", "--format", "maildir", str(md))
    assert code == 0 and "exported 4 messages" in out
    code, out, _ = r("export", "--user", "a@example.org", "--format", "maildir", str(md))
    assert code == 0 and "exported 0 messages" in out and "left out 4 messages exported there before" in out
    assert len(list((md / "cur").iterdir())) == 4
    code, out, _ = r("import", "--user", "a@example.org", str(md))
    assert code == 0 and "imported 0 messages" in out  # the Maildir holds the same bytes as the INBOX
    for command, fragments in (("export", ("postroom-exported", "writes only")), ("import", ("--duplicates",))):
        with pytest.raises(SystemExit):
            r(command, "--help")
        out = " ".join(r.capsys.readouterr().out.split())
        assert all(f in out for f in fragments), out
    assert "already holds" in out


# --------------------------------------------------------------------------------------------------------
# Item 4: confirmation before what cannot be undone


def test_destructive_commands_ask_or_need_yes(r: Cli, tmp_path: Path) -> None:
    assert r("domain", "add", "example.org")[0] == 0
    assert r("domain", "add", "spare.test")[0] == 0
    assert r("user", "add", "a@example.org", "--password-stdin", stdin="longenough\n")[0] == 0
    src = tmp_path / "in.mbox"
    src.write_bytes(MBOX)
    assert r("import", "--user", "a@example.org", str(src))[0] == 0
    assert r("list", "create", "team@example.org", "--owner", "a@example.org", "--member", "m@far.test")[0] == 0

    def users() -> str:
        return r("user", "list")[1]

    # Not a terminal and no --yes: refused, nothing changed, and the message says how to go on.
    for argv in (("user", "remove", "a@example.org"), ("domain", "remove", "spare.test"),
                 ("list", "delete", "team@example.org")):
        code, _, err = r(*argv)
        assert code == 2 and "add --yes to confirm" in one_line(err), err
    assert "a@example.org" in users() and "spare.test" in r("domain", "list")[1]
    assert r("list", "show", "team@example.org")[0] == 0
    # On a terminal: a question naming what goes; anything but yes keeps it.
    code, _, err = r("user", "remove", "a@example.org", stdin="n\n", tty=True)
    assert code == 1 and "all their mail (2 messages in" in err and "[y/N]" in err
    assert "a@example.org" in users()
    code, out, _ = r("user", "remove", "a@example.org", stdin="y\n", tty=True)
    assert code == 0 and "removed" in out and "a@example.org" not in users()
    # --yes: no question.
    assert r("list", "delete", "team@example.org", "--yes")[0] == 0
    assert r("domain", "remove", "spare.test", "-y")[0] == 0
    assert "spare.test" not in r("domain", "list")[1]


def test_queue_delete_needs_yes(r: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    assert r("domain", "add", "example.org")[0] == 0
    code, _, err = r("sendmail", "-f", "a@example.org", "someone@far.test", stdin="Subject: x\n\nx\n")
    assert code == 0, err
    code, out, _ = r("queue", "list")
    qid = out.splitlines()[2].split()[0]
    code, _, err = r("queue", "delete", qid)
    assert code == 2 and "add --yes" in err
    assert qid in r("queue", "list")[1].split()
    assert r("queue", "delete", qid, "--yes")[0] == 0
    assert "0 recipient(s) waiting" in r("queue", "list")[1]
