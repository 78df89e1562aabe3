"""The admin flag of users and the DKIM keys of a rotation (schema 20): `set_admin`, `set_dkim_next`,
`switch_dkim`."""

from __future__ import annotations

import json

import pytest

from postroom.store.api import NotFound, Store


async def test_admin_flag_set_and_taken(store: Store) -> None:
    await store.add_domain("example.org")
    made = await store.add_user("a@example.org", "hash")
    assert made.admin is False and (await store.get_user("a@example.org")).admin is False  # type: ignore[union-attr]
    await store.set_admin("A@Example.org", True)
    assert (await store.get_user("a@example.org")).admin is True  # type: ignore[union-attr]
    assert (await store.get_user_by_id(made.id)).admin is True  # type: ignore[union-attr]
    assert [u.admin for u in await store.list_users()] == [True]
    await store.set_admin("a@example.org", False)
    assert (await store.get_user("a@example.org")).admin is False  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        await store.set_admin("nobody@example.org", True)


async def test_dkim_keys_kept_then_switched_in_one_step(store: Store) -> None:
    await store.add_domain("example.org")
    await store.set_dkim("example.org", "old-r", "OLD RSA", "old-e", "OLD ED")
    assert await store.switch_dkim("example.org") is False  # nothing kept: nothing changes
    assert await store.set_dkim_next("example.org", "new-r", "NEW RSA", "new-e", "NEW ED") is True
    # A second rotation while these wait (two admins at once) writes nothing: theirs may be published already.
    assert await store.set_dkim_next("example.org", "other-r", "OTHER", "other-e", "OTHER ED") is False
    kept = await store.get_domain("example.org")
    assert kept is not None and kept.dkim_selector == "old-r" and kept.dkim_private_key == "OLD RSA"  # still signing
    assert json.loads(kept.dkim_next) == {"selector": "new-r", "private_key": "NEW RSA", "ed25519_selector": "new-e",
                                          "ed25519_key": "NEW ED"}
    assert await store.switch_dkim("example.org") is True
    now = await store.get_domain("example.org")
    assert now is not None
    assert (now.dkim_selector, now.dkim_private_key, now.dkim_ed25519_selector, now.dkim_ed25519_key,
            now.dkim_next) == ("new-r", "NEW RSA", "new-e", "NEW ED", "")
    with pytest.raises(NotFound):
        await store.switch_dkim("nowhere.example")
    with pytest.raises(NotFound):
        await store.set_dkim_next("nowhere.example", "a", "b", "c", "d")
