"""`postroom migrate --to postgresql://...` (issue 16 item 4): a filled SQLite store copied into a real
PostgreSQL (tests/pgcluster.py) reads back the same through the `Store` interface: every mailbox's UIDVALIDITY,
UIDNEXT and HIGHESTMODSEQ, every message's UID, MODSEQ, flags, keywords, dates, thread and bytes, the expunged
record, the queue, lists, aliases, quotas, the admin flag, DKIM keys kept for a rotation, sender rules, training
signals, DMARC results, IMAP structures and held list posts; new ids and UIDs continue past the old ones; a
second run refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from postroom import cli
from postroom.mime.meta import compute_meta
from postroom.store import open_store
from postroom.store.api import (
    AppendRequest,
    DmarcEvaluation,
    Flag,
    HeldPost,
    ListPolicy,
    QueueRecipient,
    RcptState,
    Store,
    StoreMode,
    UserSettings,
)
from postroom.store.postgresql import PostgreSQLStore


def body(n: int, size: int = 0) -> bytes:
    raw = (f"From: a{n}@example.org\r\nTo: b@example.org\r\nSubject: message {n}\r\n"
           f"Message-ID: <m{n}@example.org>\r\n\r\nbody {n}\r\n").encode()
    return raw + b"x" * max(0, size - len(raw))


async def fill(store: Store) -> int:
    """Fill the store; returns the id of its newest mailbox, deleted (an id handed out and gone)."""
    await store.add_domain("example.org")
    alice = await store.add_user("alice@example.org", "$argon2id$fake")
    bob = await store.add_user("bob@example.org", "$argon2id$fake")
    await store.add_alias("postmaster@example.org", ["alice@example.org"])
    await store.create_list("team@example.org", "alice@example.org", ListPolicy.MEMBERS)
    await store.add_list_member("team@example.org", "Bob@example.org")
    inbox = await store.get_mailbox(alice.id, "INBOX")
    assert inbox is not None
    for n in range(12):
        raw = body(n, 300_000 if n == 5 else 0)
        await store.append(inbox.id, AppendRequest(raw, keywords=frozenset({"$Label1"} if n % 3 == 0 else set()),
                                                   internal_date=1_700_000_000.0 + n,
                                                   meta=compute_meta(raw).to_bytes() if n % 2 else None))
    await store.store_flags(inbox.id, [1, 2, 3], StoreMode.ADD, int(Flag.SEEN))
    await store.store_flags(inbox.id, [4, 7], StoreMode.ADD, int(Flag.DELETED))
    await store.expunge(inbox.id)  # UIDs 4 and 7 gone: a gap, and expunged rows for QRESYNC
    await store.claim_recent(inbox.id)
    archive = await store.create_mailbox(alice.id, "Archive/2024")
    await store.copy_messages(inbox.id, [1, 2], archive.id)
    await store.delete_mailbox(alice.id, "Archive/2024")  # a mailbox id handed out and gone
    work = await store.create_mailbox(alice.id, "Work")
    await store.move_messages(inbox.id, [8], work.id)
    await store.set_acl(work.id, "bob@example.org", "lr")
    await store.set_metadata(alice.id, work.id, [("/private/comment", b"mine")])
    await store.enqueue(body(99), "alice@example.org", [QueueRecipient("x@remote.example", state=RcptState.QUEUED)])
    bob_inbox = await store.get_mailbox(bob.id, "INBOX")
    assert bob_inbox is not None
    await store.deliver([bob_inbox.id, inbox.id], AppendRequest(body(50)))
    await store.set_user_quota("bob@example.org", storage=1_000_000)
    await store.set_admin("alice@example.org", True)
    await store.set_dkim_next("example.org", "next", "rsa-pem", "next-ed", "ed-pem")
    await store.add_sender_rule("alice@example.org", "block", "spam@bad.example")
    await store.add_sender_rule("example.org", "allow", "@.partner.example")
    await store.add_training_signals(alice.id, "spam", [(await store.list_messages(inbox.id))[0].blob_id], 5.0)
    await store.add_dmarc_result(DmarcEvaluation(10.0, "remote.example", '{"p": "none"}', "192.0.2.1",
                                                 "remote.example", "remote.example", "none", True, False, "{}"))
    await store.set_user_settings(alice.id, UserSettings(
        display_name="Alice", signature="A.", default_identity="alice@example.org",
        identity_names={"alice@example.org": "Alice L."}, vacation=True, vacation_text="Away.",
        vacation_start=1_800_000_000.5, vacation_days=3))
    assert await store.claim_auto_reply(alice.id, "carol@remote.example", 50.0, 0.0)
    await store.hold_post(HeldPost("ab" * 16, "list@example.org", "x@remote.example", b"Subject: held\r\n\r\nx\r\n",
                                   20.0))
    gone = await store.create_mailbox(alice.id, "Tmp")
    await store.delete_mailbox(alice.id, "Tmp")
    return gone.id


async def snapshot(store: Store) -> dict[str, Any]:
    """What a client and an administrator see, through the interface only."""
    out: dict[str, Any] = {"domains": [(d.id, d.name) for d in await store.list_domains()],
                           "aliases": await store.list_aliases(), "lists": await store.list_lists(),
                           "queue": [(e.id, e.blob_id, e.mail_from, e.recipients) for e in await store.queue_list()],
                           "users": await store.list_users(),
                           "dkim": [(d.dkim_selector, d.dkim_next) for d in await store.list_domains()],
                           "domain rules": await store.list_sender_rules("example.org"),
                           "training": await store.due_training_signals(100.0),
                           "dmarc": await store.dmarc_aggregate(100.0), "held": await store.list_held_posts()}
    for user in await store.list_users():
        out[f"quota {user.address}"] = await store.get_quota(user.id)
        out[f"rules {user.address}"] = await store.sender_rules(user.id)
        out[f"settings {user.address}"] = await store.get_user_settings(user.id)
        if user.address == "alice@example.org":  # her auto-reply record: a claim within its window is refused
            out["replied"] = await store.claim_auto_reply(user.id, "carol@remote.example", 60.0, 40.0)
        for m in await store.list_mailboxes(user.id):
            key = f"{user.address} {m.name}"
            out[key] = (m.id, m.uidvalidity, m.uidnext, m.highestmodseq, m.subscribed, m.special_use, m.keywords,
                        await store.recent_watermark(m.id), await store.get_acl(m.id),
                        tuple((await store.vanished(m.id, 0)).uids), await store.thread_ids(m.id))
            out[key + " messages"] = [
                (i.uid, i.modseq, i.flags, i.keywords, i.internal_date, i.save_date, i.size,
                 await store.read_message(i.blob_id)) for i in await store.list_messages(m.id)]
            out[key + " structures"] = await store.read_structures(
                i.blob_id for i in await store.list_messages(m.id))
            out[key + " metadata"] = await store.get_metadata(user.id, m.id, ["/private/comment"])
    return out


def test_migrate_keeps_what_clients_know(tmp_path: Path, pg_cluster: Any, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    conf = tmp_path / "postroom.toml"
    conf.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    source = open_store(f"sqlite:///{tmp_path / 'data' / 'postroom.db'}", tmp_path / "data")

    async def prepare() -> tuple[int, dict[str, Any]]:
        async with source:
            return await fill(source), await snapshot(source)

    gone, before = asyncio.run(prepare())
    assert before["alice@example.org INBOX structures"] and before["users"][0].admin  # something to compare
    assert before["rules alice@example.org"] and before["training"] and before["dmarc"][0] and before["held"]
    url = pg_cluster.create_database()
    assert cli.main(["--config", str(conf), "migrate", "--to", url]) == 0
    out, err = capsys.readouterr()
    assert "copied and verified: 2 users" in out and "bodies" in err

    async def check() -> None:
        async with PostgreSQLStore(url, tmp_path / "data" / "blobs") as copy:
            assert await snapshot(copy) == before
            alice = await copy.get_user("alice@example.org")
            assert alice is not None
            inbox = await copy.get_mailbox(alice.id, "INBOX")
            assert inbox is not None
            r = await copy.append(inbox.id, AppendRequest(body(100)))
            assert r.uid == inbox.uidnext and r.modseq == inbox.highestmodseq + 1  # UIDs go on where they were
            new = await copy.create_mailbox(alice.id, "New")
            assert new.id > gone  # past the deleted mailbox's id too: an id is never handed out twice
            assert new.uidvalidity > inbox.uidvalidity

    asyncio.run(check())
    assert cli.main(["--config", str(conf), "migrate", "--to", url]) == 1  # the target is not empty now
    assert "not empty" in capsys.readouterr().err
