"""The web admin over HTTP (issue 13 item 7; web/admin.py): who reaches it (404 for everyone but admins, exactly
like an unknown URL), CSRF on every POST, the lock-out guard, one log line per action, and the admin flag on the
command line (`user add --admin`, `user admin ADDR on|off`, `user list`)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from web_support import client, csrf_of, page_csrf, signed_in

from postroom import cli

ADMIN, USER, PW = "root@example.org", "user@example.org", "admin-pass-1"
PAGES = ["/admin/", "/admin/domains", "/admin/users", "/admin/aliases", "/admin/lists", "/admin/queue",
         "/admin/queue/1", "/admin/dns", "/admin/dns/example.org"]
POSTS = ["/admin/domains", "/admin/users", "/admin/aliases", "/admin/lists", "/admin/queue",
         "/admin/dns/example.org"]


def make_admin(server: Any, address: str = ADMIN) -> None:
    server.add_user(address, PW)
    server.run(server.store.set_admin(address, True))


def is_admin(server: Any, address: str) -> bool:
    user = server.run(server.store.get_user(address))
    return bool(user is not None and user.admin)


def test_everyone_but_an_admin_gets_the_404_of_an_unknown_url(server: Any) -> None:
    make_admin(server)
    server.add_user(USER, PW)
    unknown = client(server).get("/admin/no-such-page")
    assert unknown.status_code == 404
    for bare in ("/admin", "/admin/users/"):  # no slash redirect shows the pages exist either
        r = client(server).get(bare)
        assert (r.status_code, r.text) == (404, unknown.text), bare
    assert client(server).get("/mail").headers["location"] == "/mail/"
    plain = signed_in(server, USER, PW)
    token = page_csrf(plain, plain.get("/mail/").headers["location"])  # a valid token of the user's own session
    for who in (client(server), plain):
        for path in PAGES:
            r = who.get(path)
            assert (r.status_code, r.text) == (404, unknown.text), path
        for path in POSTS:
            r = who.post(path, data={"csrf": token, "action": "add", "name": "evil.example", "user": USER,
                                     "on": "1"})
            assert (r.status_code, r.text) == (404, unknown.text), path
    assert server.run(server.store.get_domain("evil.example")) is None
    assert not is_admin(server, USER)
    # Only an admin's webmail pages link to the web admin.
    inbox = plain.get("/mail/").headers["location"]
    assert '<a href="/admin/">' not in plain.get(inbox).text
    # The same user made admin reaches every page (the queue entry 1 does not exist: the page says so).
    server.run(server.store.set_admin(USER, True))
    assert '<a href="/admin/">Administration</a>' in plain.get(inbox).text
    assert '<a href="/admin/">Administration</a>' in plain.get("/mail/compose").text
    for path in PAGES:
        assert plain.get(path).status_code == (404 if path == "/admin/queue/1" else 200), path
    assert plain.get("/admin/queue/99999999999999999999999").status_code == 404  # past 64 bits: no such entry


def test_a_post_without_the_csrf_token_is_403_and_changes_nothing(server: Any) -> None:
    make_admin(server)
    c = signed_in(server, ADMIN, PW)
    for data in ({"action": "add", "name": "new.example"}, {"action": "add", "name": "new.example", "csrf": "x" * 43}):
        r = c.post("/admin/domains", data=data)
        assert r.status_code == 403
    assert server.run(server.store.get_domain("new.example")) is None
    # Another site's form, even with the token, is refused by origin (mail.py invariant 2).
    token = page_csrf(c, "/admin/domains")
    r = c.post("/admin/domains", data={"csrf": token, "action": "add", "name": "new.example"},
               headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert server.run(server.store.get_domain("new.example")) is None
    r = c.post("/admin/domains", data={"csrf": token, "action": "add", "name": "new.example"})
    assert r.status_code == 200 and "Domain new.example added" in r.text
    domain = server.run(server.store.get_domain("new.example"))
    assert domain is not None and domain.dkim_private_key and domain.dkim_ed25519_key  # made as `domain add` does


def test_an_admin_cannot_lock_themselves_out(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    make_admin(server)
    make_admin(server, "other@example.org")
    c = signed_in(server, ADMIN, PW)
    page = c.get("/admin/users")
    assert f"Take admin from {ADMIN}" not in page.text and 'aria-label="Remove root@example.org"' not in page.text
    token = csrf_of(page.text)
    caplog.set_level(logging.INFO, "postroom.web.admin")
    r = c.post("/admin/users", data={"csrf": token, "action": "admin", "user": ADMIN, "on": "0"})
    assert r.status_code == 400 and "cannot remove your own admin flag" in r.text
    r = c.post("/admin/users", data={"csrf": token, "action": "remove", "user": "Root@Example.org", "confirm": "1"})
    assert r.status_code == 400 and "cannot remove your own account" in r.text
    assert is_admin(server, ADMIN)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "postroom.web.admin"]
    assert any(re.search(r"action=user-admin target=root@example.org by=root@example.org result=refused", m)
               for m in lines), lines
    # Another admin can, and it is logged with who did it.
    other = signed_in(server, "other@example.org", PW)
    r = other.post("/admin/users", data={"csrf": page_csrf(other, "/admin/users"), "action": "admin", "user": ADMIN,
                                         "on": "0"})
    assert r.status_code == 200 and not is_admin(server, ADMIN)
    assert any("action=user-admin target=root@example.org by=other@example.org result=ok" in rec.getMessage()
               for rec in caplog.records)
    assert c.get("/admin/").status_code == 404  # the session that was admin is not any more


def test_removing_needs_the_confirmation_box(server: Any) -> None:
    make_admin(server)
    server.add_user(USER, PW)
    c = signed_in(server, ADMIN, PW)
    token = page_csrf(c, "/admin/users")
    r = c.post("/admin/users", data={"csrf": token, "action": "remove", "user": USER})
    assert r.status_code == 400 and "tick the confirmation box" in r.text
    assert server.run(server.store.get_user(USER)) is not None
    r = c.post("/admin/users", data={"csrf": token, "action": "remove", "user": USER, "confirm": "1"})
    assert r.status_code == 200 and server.run(server.store.get_user(USER)) is None


def test_the_admin_flag_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    conf = tmp_path / "postroom.toml"
    conf.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO("long-password\n"))
        code = cli.main(["--config", str(conf), *args])
        out, err = capsys.readouterr()
        return code, out, err

    assert run("domain", "add", "example.org")[0] == 0
    code, out, _ = run("user", "add", "--admin", "--password-stdin", "boss@example.org")
    assert code == 0 and "admin" in out
    assert run("user", "add", "--password-stdin", "plain@example.org")[0] == 0
    code, out, _ = run("user", "list")
    assert code == 0
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:] if "@" in line}
    assert rows == {"boss@example.org": "yes", "plain@example.org": "-"}
    assert run("user", "admin", "plain@example.org", "on")[0] == 0
    assert run("user", "admin", "boss@example.org", "off")[0] == 0  # root on the machine may: no guard here
    rows = {line.split()[0]: line.split()[-1] for line in run("user", "list")[1].splitlines()[1:] if "@" in line}
    assert rows == {"boss@example.org": "-", "plain@example.org": "yes"}
    code, _, err = run("user", "admin", "nobody@example.org", "on")
    assert code == 1 and "no user nobody@example.org" in err


def test_a_second_rotation_waits_for_the_switch(server: Any) -> None:
    make_admin(server)
    c = signed_in(server, ADMIN, PW)
    token = page_csrf(c, "/admin/dns/example.org")
    assert c.post("/admin/dns/example.org", data={"csrf": token, "action": "rotate"}).status_code == 200
    kept = server.run(server.store.get_domain("example.org")).dkim_next
    r = c.post("/admin/dns/example.org", data={"csrf": token, "action": "rotate"})  # e.g. a reload sending it again
    assert r.status_code == 400 and "waiting already" in r.text
    assert server.run(server.store.get_domain("example.org")).dkim_next == kept  # the published keys are kept
    r = c.post("/admin/dns/example.org", data={"csrf": token, "action": "switch"})
    assert r.status_code == 400 and server.run(server.store.get_domain("example.org")).dkim_next == kept
    assert c.get("/admin/dns/no-such.example").status_code == 404


def test_status_page_shows_listeners_sessions_and_figures_from_the_registry(server: Any) -> None:
    import imaplib

    make_admin(server)
    c = signed_in(server, ADMIN, PW)
    imap = imaplib.IMAP4("127.0.0.1", server.port("imap"))  # one open IMAP session
    try:
        imap.noop()
        page = c.get("/admin/").text
    finally:
        imap.logout()
    for name in ("smtp", "imaps", "http", "https"):
        assert f"<td>{name}</td><td>127.0.0.1:{server.port(name)}</td>" in page
    assert "<tr><td>imap</td><td>1</td></tr>" in page  # sessions open, per protocol
    assert "postroom_sessions_total" in page and "postroom_messages_accepted_total" in page
    assert "1 domains, 1 users" in page and "0 messages in the outbound queue" in page


def test_aliases_added_and_removed(server: Any) -> None:
    make_admin(server)
    c = signed_in(server, ADMIN, PW)
    token = page_csrf(c, "/admin/aliases")
    r = c.post("/admin/aliases", data={"csrf": token, "action": "add", "source": "Sales@Example.org",
                                       "targets": "root@example.org, Someone@elsewhere.example"})
    assert r.status_code == 200
    assert "Alias sales@example.org -&gt; root@example.org, Someone@elsewhere.example" in r.text
    assert {(a.source, a.target) for a in server.run(server.store.list_aliases())} == {
        ("sales@example.org", "root@example.org"), ("sales@example.org", "Someone@elsewhere.example")}
    r = c.post("/admin/aliases", data={"csrf": token, "action": "add", "source": "x@not-local.example",
                                       "targets": "root@example.org"})
    assert r.status_code == 400 and "not-local.example is not a local domain" in r.text
    r = c.post("/admin/aliases", data={"csrf": token, "action": "remove", "source": "sales@example.org",
                                       "target": "root@example.org", "confirm": "1"})
    assert r.status_code == 200
    assert [(a.source, a.target) for a in server.run(server.store.list_aliases())] == [
        ("sales@example.org", "Someone@elsewhere.example")]


def test_dkim_rotation_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same rotation as the DNS page (adminops): new keys shown by `postroom dns`, signing only after
    --switch."""
    conf = tmp_path / "postroom.toml"
    conf.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nhostname = "mail.example.org"\n')

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--config", str(conf), *args])
        out, err = capsys.readouterr()
        return code, out, err

    assert run("domain", "add", "example.org")[0] == 0
    before = run("dns", "example.org")[1]
    old = re.search(r"^(pr\w+r)\._domainkey", before, re.M)
    assert old is not None
    code, out, _ = run("domain", "dkim", "example.org", "--rotate")
    assert code == 0 and "not signing yet" in out
    new = re.search(r"selectors (pr\w+r),", out)
    assert new is not None and new.group(1) != old.group(1)
    shown = run("dns", "example.org")[1]
    assert f"{old.group(1)}._domainkey" in shown and f"{new.group(1)}._domainkey" in shown
    assert "rotation under way" in shown
    code, _, err = run("domain", "dkim", "example.org", "--rotate")
    assert code == 1 and "waiting already" in err
    code, out, _ = run("domain", "dkim", "example.org", "--switch")
    assert code == 0 and f"signs with selectors {new.group(1)}" in out
    after = run("dns", "example.org")[1]
    assert f"{new.group(1)}._domainkey" in after and f"{old.group(1)}._domainkey" not in after
    code, _, err = run("domain", "dkim", "example.org", "--switch")
    assert code == 1 and "no new DKIM keys waiting" in err


def test_the_queue_pages_show_who_holds_a_recipient(server: Any) -> None:
    """Issue 16 item 3: a recipient a scheduler (of this node or another) is sending shows its lease holder on the
    queue list and the entry's page; a free one shows "-"."""
    import time

    from postroom.store.api import QueueRecipient

    make_admin(server)
    c = signed_in(server, ADMIN, PW)
    later = time.time() + 3600  # not due for this server's own scheduler
    entry = server.run(server.store.enqueue(b"Subject: held\r\n\r\nbody\r\n", ADMIN, [
        QueueRecipient("far@remote.example", next_try=later),
        QueueRecipient("free@remote.example", next_try=later + 60)]))
    assert "node2-77aa#31.beef" not in c.get("/admin/queue").text
    got = server.run(server.store.queue_claim(later, "node2-77aa#31.beef", 7200.0, limit=1))
    assert got.claimed == [(entry.id, "far@remote.example")]
    assert "<td>node2-77aa#31.beef</td>" in c.get("/admin/queue").text
    page = c.get(f"/admin/queue/{entry.id}").text
    assert re.search(r"<td>far@remote\.example</td>.*<td>node2-77aa#31\.beef \(lease ends in \dh\d\dm\)</td>", page)
    assert re.search(r"<td>free@remote\.example</td>(<td>[^<]*</td>){3}<td>-</td>", page)
