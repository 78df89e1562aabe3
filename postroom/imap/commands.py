"""The IMAP command table: each wire name, the session states it is valid in, and its handler.

Theory of operation
-------------------
`COMMANDS` is the one place that says which commands exist (style habit 3: state rules are data). The key is the
command's wire name as `parser.Command.verb` spells it: upper case, and "UID FETCH" for the UID form (RFC 9051 §6.4.9).
The session looks the verb up (`Session._dispatch`), refuses it with BAD when it is unknown or not valid in the
session's state (RFC 9051 §3), and otherwise awaits the handler, which returns the tagged OK's response code and
text or raises (errors.py). The parser has its own table of argument parsers (`parser._PARSERS`, `_UID_PARSERS`)
under the same names; docs/ARCHITECTURE.md "IMAP commands" lists, for every wire name, its parser, its handler
and its tests.

Invariants
1. Every verb the parser accepts has an entry here and every entry a parser (tests/unit/test_imap_commands_table.py).
2. The table is plain data built at import time: no handler registers itself, so importing a command module has
   no effect on what the server answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from . import (
    acl,
    auth,
    compress,
    fetch,
    idle,
    mailboxes,
    messages,
    metadata,
    notify,
    quota,
    search,
    sort,
    thread,
    update,
)
from . import parser as P
from .errors import Result
from .state import ANY, AUTH_ONLY, AUTHED, NOT_AUTH_ONLY, ONLY_SELECTED

if TYPE_CHECKING:
    from .session import Session

Handler = Callable[["Session", P.Command], Awaitable[Result]]

COMMANDS: dict[str, tuple[frozenset[str], Handler]] = {
    # Any state (RFC 9051 §6.1); ID (RFC 2971)
    "CAPABILITY": (ANY, auth.capability),
    "NOOP": (ANY, auth.noop),
    "LOGOUT": (ANY, auth.logout),
    "ID": (ANY, auth.id_),
    # Not authenticated (RFC 9051 §6.2; SASL-IR RFC 4959)
    "STARTTLS": (NOT_AUTH_ONLY, auth.starttls),
    "LOGIN": (NOT_AUTH_ONLY, auth.login),
    "AUTHENTICATE": (NOT_AUTH_ONLY, auth.authenticate),
    # Authenticated (RFC 9051 §6.3): ENABLE only before a mailbox is selected (§6.3.1)
    "ENABLE": (AUTH_ONLY, auth.enable),
    "UNAUTHENTICATE": (AUTHED, auth.unauthenticate),  # RFC 8437
    "SELECT": (AUTHED, mailboxes.select),
    "EXAMINE": (AUTHED, mailboxes.select),
    "CREATE": (AUTHED, mailboxes.create),  # CREATE-SPECIAL-USE, RFC 6154 §3
    "DELETE": (AUTHED, mailboxes.delete),
    "RENAME": (AUTHED, mailboxes.rename),
    "SUBSCRIBE": (AUTHED, mailboxes.subscribe),
    "UNSUBSCRIBE": (AUTHED, mailboxes.subscribe),
    "NAMESPACE": (AUTHED, mailboxes.namespace),  # RFC 2342
    "LIST": (AUTHED, mailboxes.list_),  # LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819
    "LSUB": (AUTHED, mailboxes.lsub),  # RFC 3501 §6.3.9
    "STATUS": (AUTHED, mailboxes.status),
    "APPEND": (AUTHED, mailboxes.append),  # MULTIAPPEND RFC 3502, CATENATE RFC 4469 (catenate.py)
    "IDLE": (AUTHED, idle.idle),  # RFC 2177
    "COMPRESS": (AUTHED, compress.compress),  # RFC 4978
    "NOTIFY": (AUTHED, notify.notify),  # RFC 5465
    "GETMETADATA": (AUTHED, metadata.getmetadata),  # RFC 5464
    "SETMETADATA": (AUTHED, metadata.setmetadata),
    "SETACL": (AUTHED, acl.setacl),  # RFC 4314 §3
    "DELETEACL": (AUTHED, acl.deleteacl),
    "GETACL": (AUTHED, acl.getacl),
    "LISTRIGHTS": (AUTHED, acl.listrights),
    "MYRIGHTS": (AUTHED, acl.myrights),
    "GETQUOTA": (AUTHED, quota.getquota),  # RFC 9208 §4
    "GETQUOTAROOT": (AUTHED, quota.getquotaroot),
    "SETQUOTA": (AUTHED, quota.setquota),
    # Selected (RFC 9051 §6.4); the UID forms (§6.4.9) share their handler, which reads `cmd.uid`
    "CHECK": (ONLY_SELECTED, messages.check),  # RFC 3501 §6.4.1
    "CLOSE": (ONLY_SELECTED, messages.close),
    "UNSELECT": (ONLY_SELECTED, messages.unselect),
    "EXPUNGE": (ONLY_SELECTED, messages.expunge),
    "UID EXPUNGE": (ONLY_SELECTED, messages.uid_expunge),  # UIDPLUS, RFC 4315 §2.1
    "SEARCH": (ONLY_SELECTED, search.search),  # ESEARCH RFC 4731, SEARCHRES RFC 5182, CONTEXT RFC 5267
    "UID SEARCH": (ONLY_SELECTED, search.search),
    "FETCH": (ONLY_SELECTED, fetch.fetch),
    "UID FETCH": (ONLY_SELECTED, fetch.fetch),
    "STORE": (ONLY_SELECTED, messages.store),
    "UID STORE": (ONLY_SELECTED, messages.store),
    "COPY": (ONLY_SELECTED, messages.copy),
    "UID COPY": (ONLY_SELECTED, messages.copy),
    "MOVE": (ONLY_SELECTED, messages.move),  # RFC 6851
    "UID MOVE": (ONLY_SELECTED, messages.move),
    "SORT": (ONLY_SELECTED, sort.sort),  # RFC 5256 §3, ESORT RFC 5267
    "UID SORT": (ONLY_SELECTED, sort.sort),
    "THREAD": (ONLY_SELECTED, thread.thread),  # RFC 5256 §3
    "UID THREAD": (ONLY_SELECTED, thread.thread),
    "CANCELUPDATE": (ONLY_SELECTED, update.cancelupdate),  # RFC 5267 §4.3
}
