"""The webmail over HTTP (issue 10, items 1-5): sign-in and sessions, CSRF, ownership, expiry, the https
listener, downloads and the security headers, checked with httpx as a browser without script would act."""

from __future__ import annotations

import dataclasses
import imaplib
import logging
import re
from typing import Any

import httpx
import pytest
from web_support import client, csrf_of, deliver, mailbox_id, page_csrf, sign_in, signed_in

from postroom.store.api import Flag
from postroom.web.mail import Webmail
from postroom.web.sessions import Sessions, id_hash

ALICE, BOB, PW = "alice@example.org", "bob@example.org", "web-pass-1"
PLAIN = b"From: Carol <carol@example.net>\r\nTo: alice@example.org\r\nSubject: Hello there\r\n\r\nHi Alice\r\n"
ATTACHED = bytes(range(256)) * 3


def _with_attachment() -> bytes:
    import base64

    data = base64.encodebytes(ATTACHED).replace(b"\n", b"\r\n")
    return (b"From: carol@example.net\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee file\r\n"
            b"--b1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9%20final.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + data + b"--b1--\r\n")


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    # No address delay (three failures would otherwise slow every later login of the test by seconds).
    return {"auth": {"max_failures_per_ip": 1000, "max_failures_per_user": 3}, "web": {"page_size": 5}}


def _set_cookies(r: httpx.Response) -> list[str]:
    return r.headers.get_list("set-cookie")


def test_signin_cookie_flags_plain_http_and_new_id_each_time(server: Any) -> None:
    server.add_user(ALICE, PW)
    c = client(server)
    c.cookies.set("postroom_session", "planted-by-an-attacker")  # fixation attempt: never becomes signed in
    r = sign_in(c, ALICE, PW)
    assert r.status_code == 303
    cookie = next(v for v in _set_cookies(r) if v.startswith("postroom_session="))
    attrs = [a.strip().lower() for a in cookie.split(";")]
    assert {"httponly", "samesite=lax", "path=/"} <= set(attrs) and "secure" not in attrs
    first = cookie.split(";")[0].split("=", 1)[1]
    assert first != "planted-by-an-attacker" and len(first) >= 43  # 256 bits, base64url
    assert c.get("/mail/").status_code == 303  # signed in: on to the inbox
    # A planted id stays signed out.
    other = client(server)
    other.cookies.set("postroom_session", "planted-by-an-attacker")
    assert other.get("/mail/").status_code == 200  # the sign-in form
    # Signing in again gives a new id, and the one before is over.
    r2 = sign_in(c, ALICE, PW)
    second = next(v for v in _set_cookies(r2) if v.startswith("postroom_session=")).split(";")[0].split("=", 1)[1]
    assert second != first
    old = client(server)
    old.cookies.set("postroom_session", first)
    assert old.get("/mail/").status_code == 200
    # Only the hash is stored.
    assert server.run(server.store.get_web_session(id_hash(second))) is not None
    assert server.run(server.store.get_web_session(second)) is None


def test_https_listener_secure_host_cookie_and_hsts(server: Any) -> None:
    server.add_user(ALICE, PW)
    c = client(server, tls=True)
    r = sign_in(c, ALICE, PW)
    assert r.status_code == 303
    cookie = next(v for v in _set_cookies(r) if v.startswith("__Host-postroom_session="))
    attrs = [a.strip().lower() for a in cookie.split(";")]
    assert {"httponly", "samesite=lax", "path=/", "secure"} <= set(attrs)
    assert not any(a.startswith("domain") for a in attrs)  # __Host- (RFC 6265bis §4.1.3.2)
    page = c.get("/mail/", follow_redirects=True)
    assert page.status_code == 200 and "Hello" not in page.text
    assert page.headers["strict-transport-security"].startswith("max-age=")
    assert "strict-transport-security" not in client(server).get("/mail/").headers  # not over plain HTTP


def test_wrong_password_and_one_log_line_per_signin(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    server.add_user(ALICE, PW)
    caplog.set_level(logging.INFO, logger="postroom.web")
    c = client(server)
    bad = sign_in(c, ALICE, "not-the-password")
    assert bad.status_code == 401 and "Wrong address or password" in bad.text
    good = sign_in(c, ALICE, PW)
    session = next(v for v in _set_cookies(good) if v.startswith("postroom_session=")).split(";")[0].split("=", 1)[1]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("web signin")]
    assert len(lines) == 2
    assert "result=failed reason=bad-credentials user=alice@example.org" in lines[0]
    assert "result=ok user=alice@example.org" in lines[1]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "not-the-password" not in everything and PW not in everything and session not in everything


def test_post_without_or_with_a_wrong_csrf_token_is_403(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    uid = deliver(server, alice, PLAIN)
    box = mailbox_id(server, alice)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, f"/mail/box/{box}")
    for data in ({"action": "flag", "uid": str(uid)}, {"action": "flag", "uid": str(uid), "csrf": "x" * 43},
                 {"action": "flag", "uid": str(uid), "csrf": ""}):
        assert c.post(f"/mail/box/{box}", data=data).status_code == 403
    # The right token, but from another site (Origin), or with a foreign Referer: refused too.
    data = {"action": "flag", "uid": str(uid), "csrf": token}
    assert c.post(f"/mail/box/{box}", data=data, headers={"Origin": "https://evil.example"}).status_code == 403
    assert c.post(f"/mail/box/{box}", data=data, headers={"Referer": "http://evil.example/x"}).status_code == 403
    assert c.post("/mail/folders", data={"action": "create", "name": "X"}).status_code == 403
    assert c.post("/mail/signout", data={}).status_code == 403
    info = server.run(server.store.get_message(box, uid))
    assert not info.flags & Flag.FLAGGED
    # The sign-in form needs its own token too.
    fresh = client(server)
    assert fresh.post("/mail/signin", data={"username": ALICE, "password": PW}).status_code == 403
    # With the token the same request works (so the 403s above were the token's doing).
    assert c.post(f"/mail/box/{box}", data=data).status_code == 303
    assert server.run(server.store.get_message(box, uid)).flags & Flag.FLAGGED


def test_another_users_objects_answer_404(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    bob_uid = deliver(server, bob, _with_attachment())
    bob_box = mailbox_id(server, bob)
    deliver(server, alice, PLAIN)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, f"/mail/box/{mailbox_id(server, alice)}")
    for path in (f"/mail/box/{bob_box}", f"/mail/box/{bob_box}/{bob_uid}", f"/mail/box/{bob_box}/{bob_uid}/source",
                 f"/mail/box/{bob_box}/{bob_uid}/part/2", f"/mail/box/{bob_box}/{bob_uid}/html/1",
                 "/mail/box/999999", f"/mail/box/{mailbox_id(server, alice)}/999"):
        assert c.get(path).status_code == 404, path
    r = c.post(f"/mail/box/{bob_box}", data={"csrf": token, "action": "delete", "uid": str(bob_uid)})
    assert r.status_code == 404
    r = c.post(f"/mail/box/{mailbox_id(server, alice)}",
               data={"csrf": token, "action": "move", "uid": "1", "dest": str(bob_box)})
    assert r.status_code == 404
    r = c.post("/mail/folders", data={"csrf": token, "action": "delete", "mailbox": str(bob_box), "confirm": "1"})
    assert r.status_code == 404
    assert server.run(server.store.get_message(bob_box, bob_uid)) is not None
    assert not server.run(server.store.get_message(bob_box, bob_uid)).flags & Flag.SEEN


def test_signin_lockout_is_shared_with_imap(server: Any) -> None:
    server.add_user(ALICE, PW)
    server.add_user(BOB, PW)
    ctx = server.tls_client_context()
    # Failures over IMAP lock the (alice, 127.0.0.1) pair: the web refuses even the right password.
    for _ in range(3):
        with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=ctx) as imap, \
                pytest.raises(imaplib.IMAP4.error):
            imap.login(ALICE, "wrong")
    assert sign_in(client(server), ALICE, PW).status_code == 401
    # And the other way: failures on the web lock bob out of IMAP.
    for _ in range(3):
        assert sign_in(client(server), BOB, "wrong").status_code == 401
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=ctx) as imap, \
            pytest.raises(imaplib.IMAP4.error):
        imap.login(BOB, PW)


def test_plain_http_signin_refused_off_loopback_unless_allowed(server: Any) -> None:
    server.add_user(ALICE, PW)
    services = server.postroom.services
    from postroom.web.app import create_app

    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    async def attempt(allow: bool) -> tuple[int, int, str]:
        cfg = dataclasses.replace(server.config, web=dataclasses.replace(server.config.web, allow_plain_http=allow))
        app = create_app(services.metrics, health, webmail=Webmail(server.store, services.auth, cfg))
        transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))  # a client off loopback
        async with httpx.AsyncClient(transport=transport, base_url="http://mail.example.org") as c:
            form = await c.get("/mail/")
            token = csrf_of(form.text) if 'name="csrf"' in form.text else "none"
            r = await c.post("/mail/signin", data={"csrf": token, "username": ALICE, "password": PW})
            return form.status_code, r.status_code, form.text

    status, posted, text = server.run(attempt(False))
    assert status == 200 and posted == 403 and "plain HTTP" in text and 'type="password"' not in text
    status, posted, _ = server.run(attempt(True))
    assert (status, posted) == (200, 303)


def test_idle_and_absolute_expiry(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    now = [1_000_000.0]
    web = dataclasses.replace(server.config.web, session_idle_seconds=600, session_max_seconds=3600)
    sessions = Sessions(server.store, web, clock=lambda: now[0])

    async def go() -> list[bool]:
        out = []
        sid, _ = await sessions.create(alice.id)
        for step in (500, 500, 500, 500, 500, 500):  # used every 500 s: idle never reached
            now[0] += step
            out.append(await sessions.lookup(sid) is not None)
        now[0] += 700  # 3,700 s after sign-in: past the absolute limit anyway
        out.append(await sessions.lookup(sid) is not None)
        sid2, _ = await sessions.create(alice.id)
        now[0] += 601  # idle too long
        out.append(await sessions.lookup(sid2) is not None)
        out.append(await server.store.get_web_session(id_hash(sid2)) is not None)  # and the row is gone
        return out

    assert server.run(go()) == [True] * 6 + [False, False, False]


def test_sign_out_and_sign_out_everywhere(server: Any) -> None:
    server.add_user(ALICE, PW)
    a, b, c = (signed_in(server, ALICE, PW) for _ in range(3))
    r = a.post("/mail/signout", data={"csrf": page_csrf(a, "/mail/folders")})
    assert r.status_code == 303 and a.get("/mail/folders").status_code == 303  # signed out: to the form
    assert b.get("/mail/folders").status_code == 200
    r = b.post("/mail/signout", data={"csrf": page_csrf(b, "/mail/folders"), "everywhere": "1"})
    assert r.status_code == 303
    assert b.get("/mail/folders").status_code == 303 and c.get("/mail/folders").status_code == 303


def test_download_source_and_security_headers(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    raw = _with_attachment()
    uid = deliver(server, alice, raw)
    box = mailbox_id(server, alice)
    c = signed_in(server, ALICE, PW)
    assert not server.run(server.store.get_message(box, uid)).flags & Flag.SEEN
    page = c.get(f"/mail/box/{box}/{uid}")
    assert page.status_code == 200
    assert server.run(server.store.get_message(box, uid)).flags & Flag.SEEN  # opening it marks it read
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    # Script only from the app's own files: no inline script, no eval, nothing from elsewhere.
    assert "script-src 'self';" in csp and "unsafe" not in csp.split("script-src")[1].split(";")[0]
    assert "<script>" not in page.text
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert "résumé final.bin" in page.text and "application/octet-stream" in page.text
    link = re.search(r'href="(/mail/box/\d+/\d+/part/[0-9.]+)"', page.text)
    assert link
    r = c.get(link.group(1))
    assert r.status_code == 200 and r.content == ATTACHED
    # RFC 6266 §4.3 / RFC 8187: an ASCII fallback and the UTF-8 name, percent-encoded
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"r_sum_ final.bin\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.bin")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "default-src 'none'; sandbox"
    src = c.get(f"/mail/box/{box}/{uid}/source")
    assert src.content == raw and src.headers["content-type"].startswith("text/plain")
    assert src.headers["x-content-type-options"] == "nosniff"
    assert c.get(f"/mail/box/{box}/{uid}/part/9").status_code == 404
    assert c.get(f"/mail/box/{box}/{uid}/part/..%2F1").status_code == 404


def test_list_pages_newest_first_by_uid(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    for i in range(12):
        deliver(server, alice, b"From: n%d@example.net\r\nSubject: number %d\r\n\r\nx\r\n" % (i, i))
    box = mailbox_id(server, alice)
    c = signed_in(server, ALICE, PW)
    first = c.get(f"/mail/box/{box}").text
    assert re.findall(r"number (\d+)</a>", first) == ["11", "10", "9", "8", "7"]  # page_size 5
    older = re.search(r'href="(/mail/box/\d+\?below=\d+)"', first)
    assert older and "Newer messages" not in first
    second = c.get(older.group(1)).text
    assert re.findall(r"number (\d+)</a>", second) == ["6", "5", "4", "3", "2"]
    newer = re.search(r'href="(/mail/box/\d+\?above=\d+)"', second)
    assert newer
    assert re.findall(r"number (\d+)</a>", c.get(newer.group(1)).text) == ["11", "10", "9", "8", "7"]


def test_folders_create_rename_delete_and_unread_counts(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    deliver(server, alice, PLAIN)
    deliver(server, alice, PLAIN, flags=Flag.SEEN)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/folders")
    assert c.post("/mail/folders", data={"csrf": token, "action": "create", "name": "Projects/Web"}).status_code == 303
    names = {b.name for b in server.run(server.store.list_mailboxes(alice.id))}
    assert {"Projects", "Projects/Web"} <= names
    web = mailbox_id(server, alice, "Projects/Web")
    r = c.post("/mail/folders", data={"csrf": token, "action": "rename", "mailbox": str(web), "name": "Projects/Mail"})
    assert r.status_code == 303
    assert server.run(server.store.get_mailbox(alice.id, "Projects/Mail")) is not None
    r = c.post("/mail/folders", data={"csrf": token, "action": "create", "name": "Projects/Mail"})
    assert r.status_code == 409
    inbox = mailbox_id(server, alice)
    assert c.post("/mail/folders", data={"csrf": token, "action": "delete", "mailbox": str(inbox)}).status_code == 400
    assert c.post("/mail/folders", data={"csrf": token, "action": "delete", "mailbox": str(web)}).status_code == 303
    assert server.run(server.store.get_mailbox(alice.id, "Projects/Mail")) is None
    page = c.get(f"/mail/box/{inbox}").text
    assert re.search(r'Inbox</span> <span class="count">1<', page)  # one unread of two
    assert '<span class="icon" aria-hidden="true">➤</span><span class="name">Sent' in page  # RFC 6154 markers
    assert '<span class="icon" aria-hidden="true">✖</span><span class="name">Trash' in page


def test_delete_moves_to_trash_and_in_trash_expunges(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    uid = deliver(server, alice, PLAIN)
    inbox, trash = mailbox_id(server, alice), mailbox_id(server, alice, "Trash")
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, f"/mail/box/{inbox}")
    r = c.post(f"/mail/box/{inbox}", data={"csrf": token, "action": "delete", "uid": str(uid)})
    assert r.status_code == 303 and r.headers["location"] == f"/mail/box/{inbox}"
    assert server.run(server.store.get_message(inbox, uid)) is None
    [moved] = server.run(server.store.list_messages(trash))
    assert "Delete for good" in c.get(f"/mail/box/{trash}").text
    r = c.post(f"/mail/box/{trash}", data={"csrf": token, "action": "delete", "uid": str(moved.uid)})
    assert r.status_code == 303
    assert server.run(server.store.list_messages(trash)) == []
    # A move to a folder of one's own, with the page kept (?below= built from the integer alone).
    uid2 = deliver(server, alice, PLAIN)
    archive = mailbox_id(server, alice, "Archive")
    r = c.post(f"/mail/box/{inbox}", data={"csrf": token, "action": "move", "uid": str(uid2), "dest": str(archive),
                                           "below": "99"})
    assert r.status_code == 303 and r.headers["location"] == f"/mail/box/{inbox}?below=99"
    assert len(server.run(server.store.list_messages(archive))) == 1


def test_https_uses_the_mail_listeners_tls_context_and_follows_a_new_certificate(server: Any, tmp_path: Any) -> None:
    """The https listener speaks with the very SSLContext of imaps & co, so a certificate loaded into it (as the
    ACME renewal does) is what HTTPS clients get next, without a restart."""
    import socket
    import ssl

    from postroom.net.tls import ensure_certificate

    def served_cert(port: int) -> bytes:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # only reading what is served
        with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    original = ssl.PEM_cert_to_DER_cert(server.config.cert_path.read_text())
    assert served_cert(server.port("https")) == original == served_cert(server.port("imaps"))
    cert, key = tmp_path / "new-cert.pem", tmp_path / "new-key.pem"
    ensure_certificate(cert, key, "renewed.example")

    async def swap() -> None:
        server.postroom.services.tls.load_cert_chain(str(cert), str(key))

    server.run(swap())
    renewed = ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert renewed != original and served_cert(server.port("https")) == renewed
