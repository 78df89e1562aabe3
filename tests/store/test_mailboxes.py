"""Mailboxes: create, get, list, delete, rename (with children, INBOX), subscribe, status; scoping by user."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from postroom.store.api import (
    SPECIAL_USE_DEFAULTS,
    AlreadyExists,
    ChangeKind,
    Flag,
    Invalid,
    NotFound,
    SpecialUseTaken,
    Store,
    StoreMode,
)

from .conftest import inbox, msg, new_user


async def test_get_mailbox_inbox_any_case(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    for spelling in ("inbox", "InBoX", "INBOX"):
        assert await store.get_mailbox(u.id, spelling) == box
    assert await store.get_mailbox(u.id, "sent") is None  # only INBOX is case-insensitive
    assert await store.get_mailbox(u.id, "Sent") is not None
    assert await store.get_mailbox(u.id, "a//b") is None
    assert await store.get_mailbox_by_id(box.id) == box
    assert await store.get_mailbox_by_id(10**9) is None


async def test_create_mailbox_with_parents(store: Store) -> None:
    u = await new_user(store)
    before = {b.name for b in await store.list_mailboxes(u.id)}
    m = await store.create_mailbox(u.id, "Projects/2024/Q1", "\\Flagged")
    assert m.name == "Projects/2024/Q1" and m.special_use == "\\Flagged"
    assert m.uidnext == 1 and not m.subscribed and m.user_id == u.id
    names = {b.name for b in await store.list_mailboxes(u.id)}
    assert names - before == {"Projects", "Projects/2024", "Projects/2024/Q1"}
    assert await store.get_mailbox(u.id, "Projects/2024/Q1") == m
    child = await store.create_mailbox(u.id, "inbox/Sub")
    assert child.name == "INBOX/Sub"
    uidvalidities = [b.uidvalidity for b in await store.list_mailboxes(u.id)]
    assert len(set(uidvalidities)) == len(uidvalidities)


async def test_create_mailbox_errors(store: Store) -> None:
    u = await new_user(store)
    await store.create_mailbox(u.id, "Work")
    with pytest.raises(AlreadyExists):
        await store.create_mailbox(u.id, "Work")
    with pytest.raises(AlreadyExists):
        await store.create_mailbox(u.id, "inbox")
    for bad in ("", "a//b", "/a", "a/", "a\x00b"):
        with pytest.raises(Invalid):
            await store.create_mailbox(u.id, bad)
    with pytest.raises(Invalid):
        await store.create_mailbox(u.id, "X", "\\Bogus")
    with pytest.raises(NotFound):
        await store.create_mailbox(10**9, "X")


async def test_list_mailboxes_only_own(store: Store) -> None:
    a = await new_user(store, "a@example.org")
    b = await new_user(store, "b@example.org")
    await store.create_mailbox(a.id, "Private")
    assert "Private" not in {m.name for m in await store.list_mailboxes(b.id)}
    assert await store.get_mailbox(b.id, "Private") is None
    # same name for two users is fine, and they are different mailboxes
    mb = await store.create_mailbox(b.id, "Private")
    ma = await store.get_mailbox(a.id, "Private")
    assert ma is not None and ma.id != mb.id
    with pytest.raises(NotFound):
        await store.delete_mailbox(b.id, "Other")
    await store.delete_mailbox(b.id, "Private")
    assert await store.get_mailbox(a.id, "Private") == ma


async def test_delete_mailbox(store: Store) -> None:
    u = await new_user(store)
    parent = await store.create_mailbox(u.id, "Old")
    child = await store.create_mailbox(u.id, "Old/Child")
    await store.append(parent.id, msg(1))
    result = await store.delete_mailbox(u.id, "Old")
    assert [(c.kind, c.mailbox_id, c.name) for c in result.changes] == [
        (ChangeKind.MAILBOX_DELETED, parent.id, "Old")
    ]
    assert await store.get_mailbox(u.id, "Old") is None
    assert await store.get_mailbox(u.id, "Old/Child") == child  # children stay (RFC 9051 §6.3.5)
    with pytest.raises(NotFound):
        await store.list_messages(parent.id)
    with pytest.raises(NotFound):
        await store.delete_mailbox(u.id, "Old")
    for name in ("INBOX", "inbox"):
        with pytest.raises(Invalid):
            await store.delete_mailbox(u.id, name)


async def test_uidvalidity_changes_when_name_recreated(store: Store) -> None:
    u = await new_user(store)
    first = await store.create_mailbox(u.id, "Reused")
    await store.append(first.id, msg(1))
    await store.delete_mailbox(u.id, "Reused")
    second = await store.create_mailbox(u.id, "Reused")
    assert second.uidvalidity != first.uidvalidity
    assert second.id != first.id
    assert second.uidnext == 1


async def test_rename_with_children(store: Store) -> None:
    u = await new_user(store)
    a = await store.create_mailbox(u.id, "A")
    ax = await store.create_mailbox(u.id, "A/x")
    axy = await store.create_mailbox(u.id, "A/x/y")
    ab = await store.create_mailbox(u.id, "AB")  # shares the prefix but is not a child
    r = await store.append(a.id, msg(1))
    result = await store.rename_mailbox(u.id, "A", "New/B")
    renamed = {(c.old_name, c.name) for c in result.changes if c.kind is ChangeKind.MAILBOX_RENAMED}
    assert renamed == {("A", "New/B"), ("A/x", "New/B/x"), ("A/x/y", "New/B/x/y")}
    assert any(c.kind is ChangeKind.MAILBOX_CREATED and c.name == "New" for c in result.changes)
    names = {m.name for m in await store.list_mailboxes(u.id)}
    assert {"New", "New/B", "New/B/x", "New/B/x/y", "AB"} <= names
    assert not {"A", "A/x", "A/x/y"} & names
    moved = await store.get_mailbox(u.id, "New/B")
    assert moved is not None and moved.id == a.id and moved.uidvalidity == a.uidvalidity
    assert [m.uid for m in await store.list_messages(a.id)] == [r.uid]
    assert (await store.get_mailbox_by_id(ax.id)).name == "New/B/x"  # type: ignore[union-attr]
    assert (await store.get_mailbox_by_id(axy.id)).name == "New/B/x/y"  # type: ignore[union-attr]
    assert (await store.get_mailbox_by_id(ab.id)).name == "AB"  # type: ignore[union-attr]


async def test_rename_errors(store: Store) -> None:
    u = await new_user(store)
    await store.create_mailbox(u.id, "A/x")
    await store.create_mailbox(u.id, "B")
    with pytest.raises(NotFound):
        await store.rename_mailbox(u.id, "Nope", "Z")
    with pytest.raises(AlreadyExists):
        await store.rename_mailbox(u.id, "A", "B")
    with pytest.raises(AlreadyExists):
        await store.rename_mailbox(u.id, "A", "inbox")
    with pytest.raises(Invalid):
        await store.rename_mailbox(u.id, "A", "A/x/deeper")
    with pytest.raises(Invalid):
        await store.rename_mailbox(u.id, "A", "bad//name")
    # a child of the target already exists (the target itself was deleted, its child stayed)
    await store.create_mailbox(u.id, "C/x")
    await store.delete_mailbox(u.id, "C")
    with pytest.raises(AlreadyExists):
        await store.rename_mailbox(u.id, "A", "C")
    assert await store.get_mailbox(u.id, "A") is not None  # nothing half-done


async def test_rename_inbox_moves_messages(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    child = await store.create_mailbox(u.id, "INBOX/Keep")
    r1 = await store.append(box.id, msg(1, flags=Flag.SEEN, keywords=frozenset({"$Work"})))
    r2 = await store.append(box.id, msg(2))
    result = await store.rename_mailbox(u.id, "Inbox", "Old Mail/2024")
    after = await inbox(store, u)
    assert after.id == box.id and after.uidvalidity == box.uidvalidity
    assert await store.list_messages(box.id) == []
    assert after.uidnext == r2.uid + 1  # INBOX's UIDs are not reused
    new = await store.get_mailbox(u.id, "Old Mail/2024")
    assert new is not None and new.id != box.id and await store.get_mailbox(u.id, "Old Mail") is not None
    moved = await store.list_messages(new.id)
    assert [m.uid for m in moved] == [1, 2]
    assert moved[0].flags == Flag.SEEN and moved[0].keywords == {"$Work"}
    assert [await store.read_message(m.blob_id) for m in moved] == [msg(1).raw, msg(2).raw]
    kinds = [c.kind for c in result.changes]
    assert kinds.count(ChangeKind.EXPUNGE) == 2 and kinds.count(ChangeKind.APPEND) == 2
    assert {c.uid for c in result.changes if c.kind is ChangeKind.EXPUNGE} == {r1.uid, r2.uid}
    assert (await store.get_mailbox_by_id(child.id)).name == "INBOX/Keep"  # type: ignore[union-attr]
    # INBOX may be renamed to one of its own children's names
    await store.rename_mailbox(u.id, "INBOX", "INBOX/Archive")
    assert await store.get_mailbox(u.id, "INBOX/Archive") is not None


async def test_set_subscribed(store: Store) -> None:
    u = await new_user(store)
    m = await store.create_mailbox(u.id, "News")
    result = await store.set_subscribed(u.id, "News", True)
    assert [(c.kind, c.mailbox_id) for c in result.changes] == [(ChangeKind.MAILBOX_SUBSCRIBED, m.id)]
    assert (await store.get_mailbox(u.id, "News")).subscribed  # type: ignore[union-attr]
    assert (await store.set_subscribed(u.id, "News", True)).changes == ()
    result = await store.set_subscribed(u.id, "News", False)
    # the direction is in the kind (IMAP NOTIFY SubscriptionChange, RFC 5465 §5.5, tells the two apart)
    assert [(c.kind, c.mailbox_id, c.name) for c in result.changes] == [(ChangeKind.MAILBOX_UNSUBSCRIBED, m.id, "News")]
    assert not (await store.get_mailbox(u.id, "News")).subscribed  # type: ignore[union-attr]
    await store.set_subscribed(u.id, "inbox", False)
    assert not (await inbox(store, u)).subscribed
    assert (await store.set_subscribed(u.id, "Missing", False)).changes == ()  # not subscribed: nothing to do


async def test_mailbox_status(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    empty = await store.mailbox_status(box.id)
    assert (empty.messages, empty.unseen, empty.deleted, empty.size, empty.first_unseen_uid) == (0, 0, 0, 0, None)
    assert empty.mailbox == box
    r1 = await store.append(box.id, msg(1, flags=Flag.SEEN))
    r2 = await store.append(box.id, msg(2, flags=Flag.DELETED))
    await store.append(box.id, msg(3, flags=Flag.SEEN | Flag.DELETED))
    st = await store.mailbox_status(box.id)
    sizes = sum(len(msg(i).raw) for i in (1, 2, 3))
    assert (st.messages, st.unseen, st.deleted, st.size) == (3, 1, 2, sizes)
    assert st.first_unseen_uid == r2.uid
    assert st.mailbox.uidnext == r2.uid + 2 and st.mailbox.highestmodseq > r1.modseq
    with pytest.raises(NotFound):
        await store.mailbox_status(10**9)


async def test_mailbox_status_and_select_view_across_the_small_mailbox_size(store: Store) -> None:
    """The SQLite engine reads a mailbox of at most 256 possible messages (UIDNEXT - 1) on the event loop and a
    larger one on a reader thread (sqlite/common.py `_read_mailbox`): the answers are the same on both sides."""
    u = await new_user(store)
    box = await inbox(store, u)
    done = 0
    for n in (255, 256, 257, 300):  # message i has UID i; unseen: every fifth (5, 10, ...); $Hot on 7 and 260
        await store.append_many(box.id, [msg(i, flags=0 if i % 5 == 0 else Flag.SEEN,
                                             keywords=frozenset({"$Hot"}) if i in (7, 260) else frozenset())
                                         for i in range(done + 1, n + 1)])
        done = n
        st = await store.mailbox_status(box.id)
        assert (st.messages, st.unseen, st.first_unseen_uid, st.mailbox.uidnext) == (n, n // 5, 5, n + 1)
        view = await store.select_view(box.id)
        assert (list(view.uids), view.first_unseen_uid, view.keywords) == (list(range(1, n + 1)), 5, {"$Hot"})
    await store.store_flags(box.id, [5, 7, 260], StoreMode.ADD, Flag.DELETED)
    await store.expunge(box.id, [5, 7, 260])  # 297 messages left, UIDNEXT still 301: the reader thread's side
    st = await store.mailbox_status(box.id)
    assert (st.messages, st.unseen, st.first_unseen_uid) == (297, 58, 10)  # 5 and 260 were unseen
    view = await store.select_view(box.id)
    assert (len(view.uids), view.first_unseen_uid, view.keywords) == (297, 10, frozenset())


async def test_append_claiming_recent(store: Store) -> None:
    """`append(..., claim_recent=True)` claims as `claim_recent` would right after it (RFC 3501 §6.3.11: the
    appended message is \\Recent): everything unclaimed up to the new message, once."""
    user = await new_user(store)
    box = await inbox(store, user)
    plain = await store.append(box.id, msg(1))
    assert plain.recent == (0, 0)  # not asked: nothing claimed
    r2 = await store.append(box.id, msg(2), claim_recent=True)
    assert (r2.uid, r2.recent) == (2, (0, 2))  # the unclaimed arrival 1 and itself
    r3 = await store.append(box.id, msg(3), claim_recent=True)
    assert r3.recent == (2, 3)
    assert await store.claim_recent(box.id) == (3, 3)  # nothing left to claim
    assert await store.recent_watermark(box.id) == 3


async def test_claim_recent_once(store: Store) -> None:
    """IMAP \\Recent (RFC 3501 §2.3.2): each UID is claimed by one caller only; new arrivals become claimable."""
    user = await new_user(store)
    box = await inbox(store, user)
    assert await store.recent_watermark(box.id) == 0
    assert await store.claim_recent(box.id) == (0, 0)  # empty: nothing to claim
    for n in range(3):
        await store.append(box.id, msg(n))
    assert await store.recent_watermark(box.id) == 0  # peeking claims nothing
    assert await store.claim_recent(box.id) == (0, 3)
    assert await store.claim_recent(box.id) == (3, 3)  # the second claim gets nothing
    await store.append(box.id, msg(4))
    await store.append(box.id, msg(5))
    await store.remove_messages(box.id, [5])  # expunging does not move the watermark back
    assert await store.recent_watermark(box.id) == 3
    results = await asyncio.gather(*(store.claim_recent(box.id) for _ in range(5)))
    assert sorted(results) == [(3, 5), (5, 5), (5, 5), (5, 5), (5, 5)]  # concurrent claims: one winner
    other = await store.create_mailbox(user.id, "Other")
    assert await store.claim_recent(other.id) == (0, 0)  # per mailbox
    with pytest.raises(NotFound):
        await store.claim_recent(999_999)


async def test_claim_recent_survives_reopen(store_factory: Callable[[], Store]) -> None:
    s = store_factory()
    await s.open()
    try:
        user = await new_user(s)
        box = await inbox(s, user)
        await s.append(box.id, msg(1))
        await s.append(box.id, msg(2))
        assert await s.claim_recent(box.id) == (0, 2)
    finally:
        await s.close()
    s = store_factory()
    await s.open()
    try:
        assert await s.recent_watermark(box.id) == 2
        assert await s.claim_recent(box.id) == (2, 2)  # a restart does not make old messages recent again
        await s.append(box.id, msg(3))
        assert await s.claim_recent(box.id) == (2, 3)
    finally:
        await s.close()


# ---- subscriptions (issue 15 item 3): a per-user set of names, not a property of a mailbox row


async def test_subscriptions_outlive_their_mailbox(store: Store) -> None:
    """RFC 3501 §6.3.9: the server "MUST NOT unilaterally remove an existing mailbox name from the subscription
    list even if a mailbox by that name no longer exists"; RFC 9051 §6.3.7 (SHOULD NOT)."""
    u = await new_user(store)
    m = await store.create_mailbox(u.id, "a/b")
    await store.set_subscribed(u.id, "a/b", True)
    await store.delete_mailbox(u.id, "a/b")
    assert "a/b" in await store.list_subscriptions(u.id)
    # a mailbox of that name made again is subscribed again: the name is what is subscribed
    again = await store.create_mailbox(u.id, "a/b")
    assert again.id != m.id and again.subscribed
    await store.delete_mailbox(u.id, "a/b")
    # UNSUBSCRIBE of a name whose mailbox is gone works (RFC 9051 §6.3.8)
    result = await store.set_subscribed(u.id, "a/b", False)
    assert [(c.kind, c.mailbox_id, c.name) for c in result.changes] == [(ChangeKind.MAILBOX_UNSUBSCRIBED, 0, "a/b")]
    assert "a/b" not in await store.list_subscriptions(u.id)


async def test_subscribe_names_without_mailboxes(store: Store) -> None:
    """RFC 9051 §6.3.7: a server MAY check that the mailbox exists; Postroom subscribes the name either way."""
    u = await new_user(store)
    await store.set_subscribed(u.id, "news/comp/mail", True)
    await store.set_subscribed(u.id, "inbox/Sub", True)  # INBOX is spelled INBOX (names invariant 2)
    subs = await store.list_subscriptions(u.id)
    assert "news/comp/mail" in subs and "INBOX/Sub" in subs and subs == sorted(subs)
    assert await store.get_mailbox(u.id, "news/comp/mail") is None
    made = await store.create_mailbox(u.id, "news/comp/mail")
    assert made.subscribed and not (await store.get_mailbox(u.id, "news")).subscribed  # type: ignore[union-attr]
    with pytest.raises(Invalid):
        await store.set_subscribed(u.id, "a//b", True)
    other = await new_user(store, "bob@example.org")
    assert "news/comp/mail" not in await store.list_subscriptions(other.id)  # scoped by user (api 6)


async def test_rename_leaves_subscriptions_alone(store: Store) -> None:
    """RFC 9051 §6.3.6: "renaming a mailbox doesn't update subscription information on the original name"; a
    client that wants it moved sends SUBSCRIBE new, UNSUBSCRIBE old (Dovecot does the same)."""
    u = await new_user(store)
    await store.create_mailbox(u.id, "R/child")
    await store.set_subscribed(u.id, "R", True)
    await store.set_subscribed(u.id, "R/child", True)
    await store.rename_mailbox(u.id, "R", "S")
    subs = await store.list_subscriptions(u.id)
    assert "R" in subs and "R/child" in subs and "S" not in subs and "S/child" not in subs
    assert not (await store.get_mailbox(u.id, "S")).subscribed  # type: ignore[union-attr]


async def test_subscriptions_are_capped(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from postroom.store import names

    monkeypatch.setattr(names, "MAX_SUBSCRIPTIONS", len(SPECIAL_USE_DEFAULTS) + 1)
    u = await new_user(store)
    await store.set_subscribed(u.id, "one", True)
    with pytest.raises(Invalid):
        await store.set_subscribed(u.id, "two", True)
    await store.set_subscribed(u.id, "one", True)  # already there: no new row, no error
    await store.set_subscribed(u.id, "one", False)
    await store.set_subscribed(u.id, "two", True)


async def test_remove_user_drops_subscriptions(store: Store) -> None:
    u = await new_user(store)
    await store.set_subscribed(u.id, "gone/name", True)
    await store.remove_user(u.address)
    again = await new_user(store)
    assert await store.list_subscriptions(again.id) == sorted(name for name, _ in SPECIAL_USE_DEFAULTS)


async def test_one_mailbox_per_special_use(store: Store) -> None:
    # create_mailbox: a special use another mailbox of the user has is SpecialUseTaken, and nothing is created;
    # another user, or the same user after the first is deleted, may have it.
    alice = await new_user(store)
    bob = await new_user(store, "bob@example.org")
    with pytest.raises(SpecialUseTaken):
        await store.create_mailbox(alice.id, "Sent2", "\\sent")  # "Sent" has \Sent from add_user
    assert await store.get_mailbox(alice.id, "Sent2") is None
    await store.create_mailbox(bob.id, "Flagged mail", "\\Flagged")
    m = await store.create_mailbox(alice.id, "Flagged mail", "\\Flagged")
    assert m.special_use == "\\Flagged"
    await store.delete_mailbox(alice.id, "Sent")
    assert (await store.create_mailbox(alice.id, "Sent2", "\\Sent")).special_use == "\\Sent"
