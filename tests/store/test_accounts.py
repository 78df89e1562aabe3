"""Domains, users, aliases and mailing lists."""

from __future__ import annotations

import pytest

from postroom.store.api import (
    SPECIAL_USE_DEFAULTS,
    Alias,
    AlreadyExists,
    AppendRequest,
    Invalid,
    ListPolicy,
    NotFound,
    Store,
)

from .conftest import BODY_BACKENDS, inbox, new_user, stored_bodies

# ---- domains


async def test_add_get_list_domains(store: Store) -> None:
    d = await store.add_domain("Example.ORG")
    assert d.name == "example.org" and d.id > 0 and d.created > 0
    assert d.dkim_selector == "" and d.dkim_private_key == ""
    await store.add_domain("b.example")
    got = await store.get_domain("EXAMPLE.org")
    assert got == d
    assert await store.get_domain("nope.example") is None
    assert [x.name for x in await store.list_domains()] == ["b.example", "example.org"]


async def test_add_domain_errors(store: Store) -> None:
    await store.add_domain("example.org")
    with pytest.raises(AlreadyExists):
        await store.add_domain("EXAMPLE.ORG")
    for bad in ("", "a b.org", "user@example.org"):
        with pytest.raises(Invalid):
            await store.add_domain(bad)


async def test_set_dkim(store: Store) -> None:
    await store.add_domain("example.org")
    await store.set_dkim("Example.org", "s1", "-----BEGIN PRIVATE KEY-----\n")
    d = await store.get_domain("example.org")
    assert d is not None and d.dkim_selector == "s1" and d.dkim_private_key.startswith("-----BEGIN")
    assert d.dkim_ed25519_selector == "" and d.dkim_ed25519_key == ""
    await store.set_dkim("example.org", "s2r", "rsa-pem", "s2e", "ed-pem")
    d = await store.get_domain("example.org")
    assert d is not None and (d.dkim_selector, d.dkim_private_key) == ("s2r", "rsa-pem")
    assert (d.dkim_ed25519_selector, d.dkim_ed25519_key) == ("s2e", "ed-pem")
    assert [x.dkim_ed25519_key for x in await store.list_domains()] == ["ed-pem"]
    with pytest.raises(NotFound):
        await store.set_dkim("other.example", "s", "k")


async def test_remove_domain(store: Store) -> None:
    await store.add_domain("example.org")
    await store.remove_domain("Example.Org")
    assert await store.get_domain("example.org") is None
    with pytest.raises(NotFound):
        await store.remove_domain("example.org")


@pytest.mark.parametrize("what", ["user", "alias", "catchall", "list"])
async def test_remove_domain_refuses_while_in_use(store: Store, what: str) -> None:
    await store.add_domain("example.org")
    if what == "user":
        await store.add_user("a@example.org", "h")
    elif what == "alias":
        await store.add_alias("x@example.org", ["y@elsewhere.example"])
    elif what == "catchall":
        await store.add_alias("@example.org", ["y@elsewhere.example"])
    else:
        await store.create_list("team@example.org", "boss@example.org", ListPolicy.OPEN)
    with pytest.raises(Invalid):
        await store.remove_domain("example.org")
    assert await store.get_domain("example.org") is not None


# ---- users


async def test_add_user_creates_default_mailboxes(store: Store) -> None:
    await store.add_domain("example.org")
    u = await store.add_user("Alice@Example.ORG", "hash", scram="scramv", quota_bytes=1000)
    assert u.address == "alice@example.org" and u.password_hash == "hash"
    assert u.scram == "scramv" and u.quota_bytes == 1000 and u.created > 0
    d = await store.get_domain("example.org")
    assert d is not None and u.domain_id == d.id
    boxes = await store.list_mailboxes(u.id)
    assert {b.name: b.special_use for b in boxes} == dict(SPECIAL_USE_DEFAULTS)
    assert all(b.subscribed for b in boxes)
    assert boxes[0].name == "INBOX"
    assert len({b.uidvalidity for b in boxes}) == len(boxes)
    assert all(b.uidnext == 1 and b.highestmodseq >= 1 for b in boxes)


async def test_add_user_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.add_user("a@example.org", "h")
    await store.add_domain("example.org")
    await store.add_user("a@example.org", "h")
    with pytest.raises(AlreadyExists):
        await store.add_user("A@EXAMPLE.ORG", "h")
    for bad in ("nodomain", "@example.org", "a b@example.org", ""):
        with pytest.raises(Invalid):
            await store.add_user(bad, "h")
    with pytest.raises(Invalid):
        await store.add_user("b@example.org", "h", quota_bytes=-1)
    await store.create_list("team@example.org", "a@example.org", ListPolicy.OPEN)
    with pytest.raises(AlreadyExists):
        await store.add_user("team@example.org", "h")


async def test_get_and_list_users(store: Store) -> None:
    a = await new_user(store, "a@example.org")
    b = await new_user(store, "b@other.example")
    assert await store.get_user("A@Example.org") == a
    assert await store.get_user("zz@example.org") is None
    assert await store.get_user("not an address") is None
    assert await store.get_user_by_id(b.id) == b
    assert await store.get_user_by_id(999999) is None
    assert await store.list_users() == [a, b]
    assert await store.list_users("OTHER.example") == [b]
    with pytest.raises(NotFound):
        await store.list_users("nope.example")


async def test_set_password(store: Store) -> None:
    await new_user(store, "a@example.org")
    await store.set_password("A@example.org", "newhash", "newscram")
    u = await store.get_user("a@example.org")
    assert u is not None and (u.password_hash, u.scram) == ("newhash", "newscram")
    with pytest.raises(NotFound):
        await store.set_password("b@example.org", "x")


@BODY_BACKENDS
async def test_remove_user_releases_everything(store: Store) -> None:
    a = await new_user(store, "a@example.org")
    b = await new_user(store, "b@example.org")
    a_in, b_in = await inbox(store, a), await inbox(store, b)
    shared = AppendRequest(b"Subject: shared\r\n\r\nsame bytes\r\n")
    only_a = AppendRequest(b"Subject: only a\r\n\r\nmine\r\n")
    r_shared = await store.deliver([a_in.id, b_in.id], shared)
    r_a = await store.append(a_in.id, only_a)
    blob_shared = (await store.get_message(a_in.id, r_shared[0].uid)).blob_id  # type: ignore[union-attr]
    blob_a = (await store.get_message(a_in.id, r_a.uid)).blob_id  # type: ignore[union-attr]
    await store.remove_user("A@example.org")
    assert await store.get_user("a@example.org") is None
    assert await store.get_user_by_id(a.id) is None
    assert await store.list_mailboxes(a.id) == []
    assert await store.get_mailbox_by_id(a_in.id) is None
    with pytest.raises(NotFound):
        await store.read_message(blob_a)
    assert await store.read_message(blob_shared) == shared.raw  # b still holds it
    assert stored_bodies(store) in ([blob_shared], None)
    with pytest.raises(NotFound):
        await store.remove_user("a@example.org")
    await store.remove_user("b@example.org")
    with pytest.raises(NotFound):
        await store.read_message(blob_shared)
    assert stored_bodies(store) in ([], None)
    # the address can be created again, and gets a new id and new mailboxes
    a2 = await store.add_user("a@example.org", "h")
    assert a2.id != a.id
    assert (await inbox(store, a2)).uidvalidity != a_in.uidvalidity


# ---- aliases


async def test_aliases(store: Store) -> None:
    await store.add_domain("example.org")
    # The source is a local name (its key, lower-case); targets keep their local part's case (RFC 5321 §2.4).
    await store.add_alias("Sales@Example.org", ["Bob@EXAMPLE.org", "carol@elsewhere.example"])
    await store.add_alias("sales@example.org", ["bob@example.org"])  # existing pair in another case: no-op
    await store.add_alias("@example.org", ["postmaster@example.org"])
    assert await store.list_aliases("sales@example.org") == [
        Alias("sales@example.org", "Bob@example.org"),
        Alias("sales@example.org", "carol@elsewhere.example"),
    ]
    assert await store.list_aliases() == [
        Alias("@example.org", "postmaster@example.org"),
        Alias("sales@example.org", "Bob@example.org"),
        Alias("sales@example.org", "carol@elsewhere.example"),
    ]
    assert await store.list_aliases("none@example.org") == []
    await store.remove_alias("sales@example.org", "BOB@example.org")
    assert await store.list_aliases("sales@example.org") == [Alias("sales@example.org", "carol@elsewhere.example")]
    await store.remove_alias("@EXAMPLE.org")
    assert await store.list_aliases("@example.org") == []
    with pytest.raises(NotFound):
        await store.remove_alias("@example.org")
    with pytest.raises(NotFound):
        await store.remove_alias("sales@example.org", "bob@example.org")


async def test_alias_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.add_alias("x@example.org", ["y@example.org"])
    await store.add_domain("example.org")
    with pytest.raises(Invalid):
        await store.add_alias("x@example.org", [])
    with pytest.raises(Invalid):
        await store.add_alias("x@example.org", ["not-an-address"])
    with pytest.raises(Invalid):
        await store.add_alias("bad source", ["y@example.org"])
    assert await store.list_aliases() == []


# ---- mailing lists


async def test_mailing_lists(store: Store) -> None:
    await store.add_domain("example.org")
    ml = await store.create_list("Team@example.org", "Boss@example.org", ListPolicy.MEMBERS)
    assert (ml.address, ml.owner, ml.policy, ml.members) == (
        "team@example.org", "Boss@example.org", ListPolicy.MEMBERS, ()
    )
    assert ml.bounce_address == "team-bounces@example.org"
    other = await store.create_list("news@example.org", "boss@example.org", ListPolicy.OPEN, "b@example.org")
    assert other.bounce_address == "b@example.org"
    await store.add_list_member("team@example.org", "Zed@example.org")
    await store.add_list_member("team@example.org", "amy@elsewhere.example")
    got = await store.get_list("TEAM@example.org")
    assert got is not None and got.members == ("Zed@example.org", "amy@elsewhere.example")
    await store.set_list_policy("team@example.org", ListPolicy.MODERATED)
    await store.remove_list_member("team@example.org", "zed@EXAMPLE.org")
    got = await store.get_list("team@example.org")
    assert got is not None and got.policy is ListPolicy.MODERATED and got.members == ("amy@elsewhere.example",)
    assert [x.address for x in await store.list_lists()] == ["news@example.org", "team@example.org"]
    await store.delete_list("team@example.org")
    assert await store.get_list("team@example.org") is None
    assert await store.get_list("garbage") is None
    # the members went with it: a new list of that name starts empty
    again = await store.create_list("team@example.org", "boss@example.org", ListPolicy.OPEN)
    assert again.members == ()


async def test_mailing_list_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.create_list("team@example.org", "boss@example.org", ListPolicy.OPEN)
    await store.add_domain("example.org")
    await store.create_list("team@example.org", "boss@example.org", ListPolicy.OPEN)
    with pytest.raises(AlreadyExists):
        await store.create_list("team@example.org", "boss@example.org", ListPolicy.OPEN)
    await store.add_user("user@example.org", "h")
    with pytest.raises(AlreadyExists):
        await store.create_list("user@example.org", "boss@example.org", ListPolicy.OPEN)
    with pytest.raises(Invalid):
        await store.create_list("bad", "boss@example.org", ListPolicy.OPEN)
    await store.add_list_member("team@example.org", "m@example.org")
    with pytest.raises(AlreadyExists):
        await store.add_list_member("team@example.org", "M@example.org")
    await store.add_list_member("team@example.org", '"Big Member"@Remote.example')
    with pytest.raises(NotFound):
        await store.add_list_member("none@example.org", "m@example.org")
    with pytest.raises(NotFound):
        await store.remove_list_member("team@example.org", "other@example.org")
    with pytest.raises(NotFound):
        await store.remove_list_member("none@example.org", "m@example.org")
    with pytest.raises(NotFound):
        await store.set_list_policy("none@example.org", ListPolicy.OPEN)
    with pytest.raises(NotFound):
        await store.delete_list("none@example.org")


async def test_targets_and_members_keep_their_case_one_per_key(store: Store) -> None:
    """RFC 5321 §2.4: the local part of an address that is sent onward keeps its case; one entry per
    case-insensitive key (accounts invariant 5), the first spelling stays; removal works in any case."""
    await store.add_domain("example.org")
    await store.add_alias("fwd@example.org", ["Ext.User@Remote.TEST", '"Quoted Name"@remote.test'])
    await store.add_alias("fwd@example.org", ["ext.user@remote.test", '"QUOTED NAME"@remote.test'])
    assert [a.target for a in await store.list_aliases("FWD@example.org")] == [
        '"Quoted Name"@remote.test', "Ext.User@remote.test"]
    await store.remove_alias("fwd@example.org", "EXT.USER@remote.test")
    assert [a.target for a in await store.list_aliases("fwd@example.org")] == ['"Quoted Name"@remote.test']

    await store.create_list("team@example.org", "The.Owner@remote.test", ListPolicy.OPEN)
    await store.add_list_member("team@example.org", "Big.Member@remote.test")
    with pytest.raises(AlreadyExists, match="Big.Member@remote.test"):
        await store.add_list_member("team@example.org", "big.member@REMOTE.test")
    got = await store.get_list("team@example.org")
    assert got is not None and (got.owner, got.members) == ("The.Owner@remote.test", ("Big.Member@remote.test",))
    await store.remove_list_member("team@example.org", "BIG.MEMBER@remote.test")
    got = await store.get_list("team@example.org")
    assert got is not None and got.members == ()
