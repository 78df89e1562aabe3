"""User settings and the auto-reply record in SQLite (schema step 24, schema invariant 28; store api invariant 16).

Theory of operation
-------------------
`user_settings` holds one row per user who saved settings (web/settings.py); a user without one has the defaults
of `UserSettings`. The identity display names are one JSON object (address -> name), read and written with the
row: they are only ever wanted together. `auto_replies` holds, per user and sender address (lower-case key),
when the last out-of-office reply went to that sender (delivery/autoreply.py, RFC 3834 §2: "at most once per
sender per N days"); `claim_auto_reply` reads and writes it in one write transaction (SQLite has one writer at a
time, so two processes delivering at once claim in turn, and the second sees the first's row), and prunes the
user's rows older than the window in the same transaction.

Invariants
1. `get_user_settings` is a primary-key point lookup; `claim_auto_reply` one point lookup and one index range
   delete (`auto_replies_sent`), never a scan.
2. Both tables go with their user (cascade).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from postroom.store import names
from postroom.store.api import Invalid, NotFound, UserSettings
from postroom.store.sqlite.common import Base
from postroom.store.sqlite.engine import Tx

COLUMNS = ("display_name, signature, default_identity, identity_names, vacation, vacation_subject, vacation_text,"
           " vacation_start, vacation_end, vacation_days")


def settings_row(s: UserSettings) -> tuple[Any, ...]:
    """The column values of COLUMNS for `s` (both engines)."""
    return (s.display_name, s.signature, s.default_identity, json.dumps(dict(s.identity_names), sort_keys=True),
            bool(s.vacation), s.vacation_subject, s.vacation_text, s.vacation_start, s.vacation_end,
            int(s.vacation_days))


def settings_of(r: Any) -> UserSettings:
    """A `UserSettings` from a row of COLUMNS (both engines)."""
    try:
        loaded = json.loads(str(r[3]) or "{}")
    except ValueError:
        loaded = {}
    idn: Mapping[str, str] = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
    return UserSettings(str(r[0]), str(r[1]), str(r[2]), idn, bool(r[4]), str(r[5]), str(r[6]),
                        None if r[7] is None else float(r[7]), None if r[8] is None else float(r[8]), int(r[9]))


def sender_key(sender: str) -> str:
    """The lower-case key of an envelope sender (`names.address` when it parses, else the text lower-cased)."""
    try:
        return names.address(sender)
    except Invalid:
        return sender.strip().lower()


class SettingsMixin(Base):
    async def get_user_settings(self, user_id: int) -> UserSettings:
        def q(conn: sqlite3.Connection) -> UserSettings:
            r = conn.execute(f"SELECT {COLUMNS} FROM user_settings WHERE user_id = ?", (user_id,)).fetchone()
            return UserSettings() if r is None else settings_of(r)

        return await self._engine.read(q, quick=True)  # invariant 1

    async def set_user_settings(self, user_id: int, settings: UserSettings) -> None:
        values = settings_row(settings)

        def op(tx: Tx) -> None:
            if tx.conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                raise NotFound(f"no user with id {user_id}")
            tx.conn.execute(
                f"INSERT OR REPLACE INTO user_settings(user_id, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (user_id, *values))

        await self._engine.write(op)

    async def claim_auto_reply(self, user_id: int, sender: str, now: float, since: float) -> bool:
        key = sender_key(sender)

        def op(tx: Tx) -> bool:
            if tx.conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                return False
            tx.conn.execute("DELETE FROM auto_replies WHERE user_id = ? AND sent < ?", (user_id, since))
            row = tx.conn.execute("SELECT sent FROM auto_replies WHERE user_id = ? AND sender = ?",
                                  (user_id, key)).fetchone()
            if row is not None:
                return False
            tx.conn.execute("INSERT INTO auto_replies(user_id, sender, sent) VALUES (?, ?, ?)", (user_id, key, now))
            return True

        return bool(await self._engine.write(op))
