"""IMAP system flags (RFC 9051 §2.3.2) as the store keeps them: a bitmask. \\Recent is per-session (RFC 9051 dropped
it) and never stored. Shared by the store and the protocol cores, so neither imports the other for them."""

from __future__ import annotations

import enum


class Flag(enum.IntFlag):
    SEEN = 1
    ANSWERED = 2
    FLAGGED = 4
    DELETED = 8
    DRAFT = 16


FLAG_NAMES: dict[Flag, str] = {
    Flag.SEEN: "\\Seen",
    Flag.ANSWERED: "\\Answered",
    Flag.FLAGGED: "\\Flagged",
    Flag.DELETED: "\\Deleted",
    Flag.DRAFT: "\\Draft",
}
FLAG_BY_NAME: dict[str, Flag] = {v.lower(): k for k, v in FLAG_NAMES.items()}


def flags_to_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


__all__ = ["FLAG_BY_NAME", "FLAG_NAMES", "Flag", "flags_to_names"]
