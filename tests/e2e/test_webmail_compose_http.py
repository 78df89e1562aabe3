"""The webmail's writing pages over HTTP (issue 10 item 5; web/compose.py), driven with httpx as a browser without
script: sending is an authenticated submission (sender checks, send limits, the router), Bcc stays out of the
delivered header, refusals come back on the form with the text kept, drafts replace each other, replies and
forwards thread and flag their originals, completion is the signed-in user's own."""

from __future__ import annotations

import email
import email.policy
import imaplib
import logging
import re
from typing import Any

import httpx
import pytest
from web_support import deliver, mailbox_id, page_csrf, signed_in

from postroom.store.api import Flag

ALICE, BOB, CAROL, PW = "alice@example.org", "bob@example.org", "carol@example.org", "compose-pass-1"
ORIGINAL = (b"From: Dana <dana@example.net>\r\nTo: alice@example.org, Erin <erin@example.net>\r\n"
            b"Cc: bob@example.org\r\nSubject: Re: RE: plans\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
            b"Message-ID: <orig-2@example.net>\r\nReferences: <orig-0@example.net> <orig-1@example.net>\r\n"
            b"In-Reply-To: <orig-1@example.net>\r\n\r\nShall we meet at noon?\r\n")


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"limits": {"message_size": 300_000, "recipients": 5},
            "smtp": {"submission_messages_per_hour": 4, "submission_recipients_per_hour": 50}}


def _messages(server: Any, user: Any, box: str = "INBOX") -> list[bytes]:
    async def go() -> list[bytes]:
        b = await server.store.get_mailbox(user.id, box)
        if b is None:
            return []
        return [await server.store.read_message(m.blob_id) for m in await server.store.list_messages(b.id)]

    return list(server.run(go()))


def _flags(server: Any, user: Any, box: str, uid: int) -> tuple[int, frozenset[str]]:
    info = server.run(server.store.get_message(mailbox_id(server, user, box), uid))
    return info.flags, info.keywords


def _send(c: httpx.Client, token: str, files: Any = None, **fields: str) -> httpx.Response:
    data = {"csrf": token, "action": "send", **fields}
    return c.post("/mail/compose", data=data, files=files or {"files": ("", b"", "application/octet-stream")})


def _header(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def test_send_without_csrf_token_is_403_and_nothing_is_sent(server: Any) -> None:
    server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/compose")
    for bad in ("", "x" * 43):
        assert _send(c, bad, to=BOB, subject="hi", body="hello").status_code == 403
    r = _send(c, token, to=BOB, subject="hi", body="hello", **{})
    assert r.status_code == 303  # the same request with the token goes (so the 403s were the token's)
    assert len(_messages(server, bob)) == 1
    # another site's Origin is refused before the body is read
    r = c.post("/mail/compose", data={"csrf": token, "action": "send", "to": BOB, "body": "x"},
               files={"files": ("", b"")}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert len(_messages(server, bob)) == 1
    # signed out: 403 too
    assert httpx.post(f"{str(c.base_url).rstrip('/')}/mail/compose", data={"csrf": token, "to": BOB},
                      files={"files": ("", b"")}).status_code == 403


def test_send_to_local_user_bcc_stays_out_and_sent_copy_is_seen(server: Any, caplog: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    carol = server.add_user(CAROL, PW)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/compose")
    attached = bytes(range(256)) * 50 + b"\x00end"
    with caplog.at_level(logging.INFO, logger="postroom.web"):
        r = _send(c, token, files={"files": ("résumé 2026.bin", attached, "application/octet-stream")},
                  to="Bob Example <bob@example.org>", bcc=CAROL, subject="Zoë’s report",
                  body="Hello Bob,\n\n" + "a long line of words " * 10 + "\nFrom the desk\n")
    assert r.status_code == 303, r.text[:2000]
    sent_box = server.run(server.store.get_mailbox(alice.id, "Sent"))
    assert r.headers["location"] == f"/mail/box/{sent_box.id}"
    (at_bob,) = _messages(server, bob)
    (at_carol,) = _messages(server, carol)
    assert b"bcc" not in _header(at_bob).lower() and b"carol" not in _header(at_bob).lower()
    assert b"bcc" not in _header(at_carol).lower()  # the Bcc recipient got it by the envelope alone
    msg = email.message_from_bytes(at_bob, policy=email.policy.default)
    assert msg["Subject"] == "Zoë’s report"
    assert b"Subject: =?utf-8?" in at_bob  # RFC 2047 on the wire
    assert msg["Message-ID"] and msg["Date"]
    body = msg.get_body(("plain",))
    assert body.get_param("format") == "flowed"
    assert all(len(line) <= 78 for line in body.get_content().split("\n"))
    assert " From the desk" in body.get_content()  # RFC 3676 §4.4 space-stuffing
    (part,) = list(msg.iter_attachments())
    assert part.get_filename() == "résumé 2026.bin" and part.get_content() == attached
    assert b"filename*=utf-8''r%C3%A9sum%C3%A9%202026.bin" in at_bob  # RFC 2231
    # The Sent copy: the same message, \Seen, and the Bcc field for the sender's record (RFC 5322 §3.6.3).
    (copy,) = _messages(server, alice, "Sent")
    assert copy.startswith(b"Bcc: " + CAROL.encode() + b"\r\n")
    assert _header(copy).split(b"\r\n")[1:] == _header(at_bob).split(b"\r\n")[-len(_header(copy).split(b"\r\n")) + 1:]
    assert server.run(server.store.list_messages(sent_box.id))[0].flags & Flag.SEEN
    assert any("web send result=ok user=alice@example.org" in rec.getMessage() and "rcpts=2" in rec.getMessage()
               for rec in caplog.records)


def test_sending_as_another_users_address_or_a_catch_all_is_refused(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    server.run(server.store.add_alias("team@example.org", [ALICE]))
    server.run(server.store.add_alias("news@example.org", ["alice+news@example.org"]))  # +detail leads to her
    server.run(server.store.add_alias("all@example.org", ["team@example.org", BOB]))  # through another alias
    server.run(server.store.add_alias("bobs@example.org", [BOB]))
    server.run(server.store.add_alias("@example.org", [ALICE]))  # a catch-all: never an identity
    c = signed_in(server, ALICE, PW)
    page = c.get("/mail/compose").text
    assert sorted(re.findall(r'<option value="([^"]+)"', page)) == sorted(
        [ALICE, "team@example.org", "news@example.org", "all@example.org"])
    token = page_csrf(c, "/mail/compose")
    for sender in (BOB, "nobody@example.org"):
        r = _send(c, token, to=BOB, subject="forged", body="kept text 123", **{"from": sender})
        assert r.status_code == 403 and "You cannot send as" in r.text and "kept text 123" in r.text
    assert _messages(server, bob) == []
    r = _send(c, token, to=BOB, subject="from the team", body="hi", **{"from": "team@example.org"})
    assert r.status_code == 303
    (got,) = _messages(server, bob)
    assert b"From: team@example.org\r\n" in got and b"Return-Path: <team@example.org>" in got
    assert _messages(server, alice, "Sent")
    # A reply to mail that came to an alias is written from that alias.
    uid = deliver(server, alice, b"From: x@example.net\r\nTo: team@example.org\r\nSubject: t\r\n\r\nhi\r\n")
    page = c.get(f"/mail/compose?mode=reply&box={mailbox_id(server, alice)}&uid={uid}").text
    assert re.findall(r'<option value="([^"]+)" selected>', page) == ["team@example.org"]


def test_errors_come_back_on_the_form_with_the_text_kept(server: Any) -> None:
    server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/compose")
    r = _send(c, token, to="bob@", subject="S1", body="my careful text")
    assert r.status_code == 400 and "is not an email address" in r.text and "my careful text" in r.text
    assert 'value="S1"' in r.text
    r = _send(c, token, to="", subject="S2", body="text two")
    assert r.status_code == 400 and "Add at least one recipient" in r.text
    r = _send(c, token, to="nosuch@example.org", subject="S3", body="text three")
    assert r.status_code == 400 and "nosuch@example.org: No such user here" in r.text and "text three" in r.text
    big = bytes(300_001)
    r = _send(c, token, files={"files": ("big.bin", big, "application/octet-stream")}, to=BOB, subject="S4",
              body="text four")
    assert r.status_code == 413 and "over the limit" in r.text and "text four" in r.text
    # just under the upload cap, but base64 makes the message too large: refused after writing, same page
    r = _send(c, token, files={"files": ("b.bin", bytes(250_000), "application/octet-stream")}, to=BOB,
              subject="S5", body="text five")
    assert r.status_code == 413 and "remove an attachment" in r.text and "text five" in r.text
    # limits.recipients (5 here) counts To, Cc and Bcc together, as submission counts RCPT commands.
    many = ", ".join(f"r{i}@example.org" for i in range(4))
    r = _send(c, token, to=BOB, cc=many, bcc="r9@example.org", subject="S6", body="text six")
    assert r.status_code == 400 and "at most 5 recipients; this one has 6" in r.text and "text six" in r.text
    assert _messages(server, bob) == []
    # The send limit (4 messages an hour here): the fifth is refused, text kept.
    for i in range(4):
        assert _send(c, token, to=BOB, subject=f"n{i}", body="x").status_code == 303
    r = _send(c, token, to=BOB, subject="n5", body="the fifth text")
    assert r.status_code == 429 and "most messages allowed in an hour" in r.text and "the fifth text" in r.text
    assert len(_messages(server, bob)) == 4


def test_reply_threads_and_sets_answered_forward_attaches_original_bytes(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    uid = deliver(server, alice, ORIGINAL)
    box = mailbox_id(server, alice)
    c = signed_in(server, ALICE, PW)
    page = c.get(f"/mail/compose?mode=all&box={box}&uid={uid}")
    assert page.status_code == 200
    text = page.text
    assert 'value="Re: plans"' in text  # RFC 5322 §3.6.5: one "Re: "
    assert 'name="in_reply_to" value="&lt;orig-2@example.net&gt;"' in text
    assert "&lt;orig-0@example.net&gt; &lt;orig-1@example.net&gt; &lt;orig-2@example.net&gt;" in text
    to = re.search(r'id="c-to" name="to" value="([^"]*)"', text).group(1)
    cc = re.search(r'id="c-cc" name="cc" value="([^"]*)"', text).group(1)
    assert "dana@example.net" in to and "erin@example.net" in to and "alice" not in to + cc
    assert "bob@example.org" in cc
    assert "&gt; Shall we meet at noon?" in text and "dana@example.net&gt; wrote:" in text
    token = page_csrf(c, "/mail/compose")
    r = _send(c, token, to=BOB, subject="Re: plans", body="Yes.\n\n> Shall we meet at noon?",
              in_reply_to="<orig-2@example.net>",
              references="<orig-0@example.net> <orig-1@example.net> <orig-2@example.net>",
              mode="reply", origin=f"{box}:{uid}")
    assert r.status_code == 303
    (reply,) = _messages(server, bob)
    msg = email.message_from_bytes(reply, policy=email.policy.default)
    assert msg["In-Reply-To"] == "<orig-2@example.net>"
    assert msg["References"] == "<orig-0@example.net> <orig-1@example.net> <orig-2@example.net>"
    # \Answered, seen over IMAP FLAGS
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context()) as imap:
        imap.login(ALICE, PW)
        imap.select("INBOX")
        _, data = imap.uid("FETCH", str(uid), "(FLAGS)")
        assert b"\\Answered" in data[0]
    # Forward as attachment: the original's stored bytes exact, $Forwarded on it.
    stored = server.run(server.store.read_message(server.run(server.store.get_message(box, uid)).blob_id))
    r = _send(c, token, to=BOB, subject="Fwd: plans", body="see below", mode="forward", origin=f"{box}:{uid}",
              attach_message=f"{box}:{uid}")
    assert r.status_code == 303
    fwd = email.message_from_bytes(_messages(server, bob)[1], policy=email.policy.default)
    (part,) = list(fwd.iter_attachments())
    assert part.get_content_type() == "message/rfc822"
    raw_fwd = _messages(server, bob)[1]
    assert b"Content-Transfer-Encoding: 7bit\r\n\r\n" + stored + b"\r\n--=_postroom_" in raw_fwd
    assert "$Forwarded" in _flags(server, alice, "INBOX", uid)[1]


def test_draft_saved_reopened_replaced_and_sent(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    carol = server.add_user(CAROL, PW)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/compose")
    r = c.post("/mail/compose", data={"csrf": token, "action": "save", "to": BOB, "bcc": CAROL,
                                      "subject": "Draft one", "body": "first words"},
               files={"files": ("notes.txt", b"attached notes\r\n", "text/plain")})
    assert r.status_code == 303
    m = re.fullmatch(r"/mail/compose\?mode=draft&uid=(\d+)&saved=1", r.headers["location"])
    assert m
    first = int(m.group(1))
    drafts = server.run(server.store.get_mailbox(alice.id, "Drafts"))
    assert drafts.special_use == "\\Drafts"
    assert _flags(server, alice, "Drafts", first)[0] & Flag.DRAFT
    page = c.get(r.headers["location"]).text
    assert "Draft saved." in page and 'value="Draft one"' in page and "first words" in page
    assert f'value="{CAROL}"' in page  # Bcc kept in the draft
    assert 'name="keep" value="2" checked' in page and "notes.txt" in page
    # Save again (the attachment kept from the draft): the first draft is expunged.
    r = c.post("/mail/compose", data={"csrf": token, "action": "save", "to": BOB, "bcc": CAROL,
                                      "subject": "Draft two", "body": "second words", "draft": str(first),
                                      "source": f"{drafts.id}:{first}", "keep": "2"},
               files={"files": ("", b"")})
    second = int(re.search(r"uid=(\d+)", r.headers["location"]).group(1))
    assert second != first
    assert [m.uid for m in server.run(server.store.list_messages(drafts.id))] == [second]
    # Send it: delivered with the attachment, the draft gone.
    r = _send(c, token, to=BOB, bcc=CAROL, subject="Draft two", body="second words", draft=str(second),
              source=f"{drafts.id}:{second}", keep="2")
    assert r.status_code == 303
    (got,) = _messages(server, bob)
    msg = email.message_from_bytes(got, policy=email.policy.default)
    (part,) = list(msg.iter_attachments())
    assert part.get_filename() == "notes.txt" and part.get_content() == "attached notes\r\n"
    assert len(_messages(server, carol)) == 1
    assert server.run(server.store.list_messages(drafts.id)) == []
    # Another user's draft cannot be named as a source: 404, nothing sent.
    r = _send(c, token, to=BOB, subject="x", body="y", source="999999:1", keep="2")
    assert r.status_code == 404 and len(_messages(server, bob)) == 1


def test_autosave_answers_json_and_completion_is_the_users_own(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    deliver(server, alice, b"From: Frank Friend <frank@example.net>\r\nTo: alice@example.org\r\n"
                           b"Subject: a\r\n\r\nx\r\n")
    deliver(server, bob, b"From: Secret Sam <sam@example.net>\r\nTo: bob@example.org\r\nSubject: b\r\n\r\nx\r\n")
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/compose")
    r = c.post("/mail/compose", data={"csrf": token, "action": "save", "autosave": "1", "to": "zed@example.net",
                                      "subject": "auto", "body": "typing"},
               files={"files": ("a.txt", b"aaa", "text/plain")})
    assert r.status_code == 200
    answer = r.json()
    assert [(a["section"], a["name"]) for a in answer["attachments"]] == [("2", "a.txt")]
    assert answer["source"].endswith(f":{answer['draft']}")
    assert _send(c, token, to=BOB, subject="hello", body="x").status_code == 303
    found = c.get("/mail/compose/correspondents", params={"q": "e"}).json()
    assert "Frank Friend <frank@example.net>" in found and BOB in found
    assert not any("sam@" in a for a in found) and ALICE not in found
    assert c.get("/mail/compose/correspondents", params={"q": "frank"}).json() == ["Frank Friend <frank@example.net>"]
    assert httpx.get(f"{str(c.base_url).rstrip('/')}/mail/compose/correspondents?q=a").status_code == 403
    # The compose page allows its own script and nothing inline.
    csp = c.get("/mail/compose").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_forward_inline_keeps_attachments_and_others_messages_are_404(server: Any, caplog: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    import base64

    data = bytes(range(256)) * 4
    with_file = (b"From: dana@example.net\r\nTo: alice@example.org\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
                 b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
                 b"numbers attached\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
                 b"Content-Disposition: attachment; filename=data.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                 + base64.encodebytes(data).replace(b"\n", b"\r\n") + b"--b1--\r\n")
    uid = deliver(server, alice, with_file)
    box = mailbox_id(server, alice)
    bob_uid = deliver(server, bob, ORIGINAL)
    c = signed_in(server, ALICE, PW)
    page = c.get(f"/mail/compose?mode=forward&box={box}&uid={uid}").text
    assert 'value="Fwd: report"' in page and "---------- Forwarded message ----------" in page
    assert "&gt; From: dana@example.net" in page and "&gt; numbers attached" in page
    assert 'name="keep" value="2" checked' in page and "data.bin" in page
    token = page_csrf(c, "/mail/compose")
    r = _send(c, token, to=BOB, subject="Fwd: report", body="see", mode="forward", origin=f"{box}:{uid}",
              source=f"{box}:{uid}", keep="2")
    assert r.status_code == 303
    (got,) = _messages(server, bob)[1:]
    (part,) = list(email.message_from_bytes(got, policy=email.policy.default).iter_attachments())
    assert part.get_filename() == "data.bin" and part.get_content() == data
    assert "$Forwarded" in _flags(server, alice, "INBOX", uid)[1]
    # invariant 1: bob's message can start nothing of alice's, nor be attached, kept or flagged
    bob_box = mailbox_id(server, bob)
    for mode in ("reply", "all", "forward", "attach"):
        assert c.get(f"/mail/compose?mode={mode}&box={bob_box}&uid={bob_uid}").status_code == 404
    with caplog.at_level(logging.INFO, logger="postroom.web"):
        r = _send(c, token, to=BOB, subject="x", body="y", attach_message=f"{bob_box}:{bob_uid}")
        assert r.status_code == 404 and "y" in r.text
        r = _send(c, token, to=BOB, subject="x", body="y", mode="reply", origin=f"{bob_box}:{bob_uid}")
        assert r.status_code == 303
    assert not _flags(server, bob, "INBOX", bob_uid)[0] & Flag.ANSWERED
    assert any("web send result=refused reason=no-original" in rec.getMessage() for rec in caplog.records)


def test_rich_text_mode_sends_an_html_twin_and_a_draft_keeps_the_mode(server: Any) -> None:
    server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/compose")
    r = c.post("/mail/compose", data={"csrf": token, "action": "save", "to": BOB, "subject": "rich",
                                      "body": "**bold** <i>not markup</i>", "rich": "1"}, files={"files": ("", b"")})
    page = c.get(r.headers["location"]).text
    assert 'name="rich" value="1" checked' in page
    draft = re.search(r'name="draft" value="(\d+)"', page).group(1)
    r = _send(c, token, to=BOB, subject="rich", body="**bold** <i>not markup</i>", rich="1", draft=draft)
    assert r.status_code == 303
    (got,) = _messages(server, bob)
    msg = email.message_from_bytes(got, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().strip() == "**bold** <i>not markup</i>"
    html_body = msg.get_body(("html",)).get_content()
    assert "<strong>bold</strong> &lt;i&gt;not markup&lt;/i&gt;" in html_body
    # read in the webmail, the HTML twin is what shows (in its sandboxed frame)
    cb = signed_in(server, BOB, PW)
    box = mailbox_id(server, bob)
    uid = server.run(server.store.list_messages(box))[0].uid
    assert "/html/2" in cb.get(f"/mail/box/{box}/{uid}").text
    assert "<strong>bold</strong>" in cb.get(f"/mail/box/{box}/{uid}/html/2").text


def test_malformed_requests_get_a_clear_answer_not_a_traceback(server: Any) -> None:
    server.add_user(ALICE, PW)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/compose")
    r = c.post("/mail/compose", data={"csrf": token, "action": "send", "to": BOB})  # urlencoded, not multipart
    assert r.status_code == 400 and "multipart/form-data" in r.text
    r = c.post("/mail/compose", content=b"--x\r\ngarbage", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400 and "could not be read" in r.text  # no boundary
    r = c.post("/mail/compose", content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
               headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400  # a part without a name
    too_many = [("files", (f"f{i}.txt", b"x", "text/plain")) for i in range(101)]
    r = c.post("/mail/compose", data={"csrf": token, "action": "send", "to": BOB}, files=too_many)
    assert r.status_code == 400 and "Too many files" in r.text
    assert c.get("/mail/compose?mode=nonsense&box=1&uid=1").status_code == 400
    assert c.get("/mail/compose?mode=draft&uid=12345").status_code == 404
    assert c.get("/mail/compose?mode=reply&box=x&uid=-1").status_code == 404


def test_a_full_mailbox_still_sends_but_keeps_no_sent_copy_and_refuses_a_draft(server: Any, caplog: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    server.run(server.store.set_user_quota(ALICE, storage=1))  # full at the first octet
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/compose")
    with caplog.at_level(logging.INFO, logger="postroom.web"):
        r = _send(c, token, to=BOB, subject="still goes", body="x")
    assert r.status_code == 303 and len(_messages(server, bob)) == 1  # the sending is what matters
    assert _messages(server, alice, "Sent") == []
    assert any("sent-copy=failed reason=OverQuota" in rec.getMessage() for rec in caplog.records)
    r = c.post("/mail/compose", data={"csrf": token, "action": "save", "to": BOB, "subject": "d",
                                      "body": "my draft text"}, files={"files": ("", b"")})
    assert r.status_code == 507 and "Your mailbox is full" in r.text and "my draft text" in r.text
    # A recipient whose mailbox cannot take the message is refused on the form, as RCPT with SIZE would be.
    server.run(server.store.set_user_quota(BOB, storage=100))
    r = _send(c, token, to=BOB, subject="too big for bob", body="y" * 500)
    assert r.status_code in (400, 503) and "bob@example.org: " in r.text and "y" * 500 in r.text
    assert len(_messages(server, bob)) == 1


def test_a_draft_keeps_half_typed_addresses_as_typed(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    c = signed_in(server, ALICE, PW)
    token = page_csrf(c, "/mail/compose")
    for typed in ("bob@", "Zoë <", "Bob Example"):
        r = c.post("/mail/compose", data={"csrf": token, "action": "save", "to": typed, "cc": "c@example.org",
                                          "subject": "half", "body": "b"}, files={"files": ("", b"")})
        assert r.status_code == 303, (typed, r.text[:300])
        page = c.get(r.headers["location"]).text
        to = re.search(r'id="c-to" name="to" value="([^"]*)"', page).group(1)
        assert to.replace("&lt;", "<") == typed and 'value="c@example.org"' in page
    raw = _messages(server, alice, "Drafts")[-1]
    assert b"X-Postroom-Draft-To: Bob Example" in raw and b"\r\nTo:" not in raw
