"""NOTIFY (RFC 5465): the client names mailboxes and events, and the server tells it of them unasked.

Theory of operation
-------------------
`NOTIFY SET [STATUS] (filter events)...` replaces the session's `Notifier`; `NOTIFY NONE` leaves one with no
groups. From the first NOTIFY on, every change of the user's feed (store/hub.py: each committed write of any
session, delivery or process of this server) goes through `Notifier.take` instead of straight to the selected
mailbox (`Session.take_change`):

* message changes of the selected mailbox (APPEND, EXPUNGE, FLAGS, new keywords) go to `Selected` as before when
  the SELECTED or SELECTED-DELAYED group asks for them (MessageNew + MessageExpunge, FlagChange), and are
  reported by the rules of RFC 9051 §7.5.1 (`state.py`): EXISTS and FETCH at any time, EXPUNGE only while a
  command that allows it runs (never between commands, nor during FETCH, STORE, SEARCH). SELECTED pushes them as
  they come, between commands too; SELECTED-DELAYED leaves them to the end of the next command or IDLE (RFC 5465
  §6.1 lets the server hold any event there). A flag change the filters do not ask for still reaches the RFC
  5267 UPDATE contexts (`Selected.context_changes`, update.py). A MessageNew fetch-att list (§5.2) is answered
  by an unsolicited `UID FETCH` of each new message after its EXISTS (non-PEEK items set \\Seen as FETCH does,
  and say so with FLAGS). Changes the filters do not ask for are dropped; the mailbox is then marked stale, and
  re-read (`Session.resync_selected`) when a later NOTIFY asks for its events again;
* message changes of any other mailbox become one `* STATUS name (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)` per
  mailbox per batch (§5.1-§5.3: the items each event needs, coalesced), read from the store when written;
* CREATE, DELETE, RENAME (MailboxName, §5.4) and SUBSCRIBE, UNSUBSCRIBE (SubscriptionChange, §5.5) become
  `* LIST` responses: `\\NonExistent` for a deleted mailbox, `("OLDNAME" (old))` for a renamed one,
  `\\Subscribed` or not;
* SETMETADATA of a mailbox entry (MailboxMetadataChange, §5.6) or a server entry (ServerMetadataChange, §5.7)
  becomes an unsolicited `* METADATA "name" entry` (RFC 5464 §4.4.2: the entry-list form, names only; the client
  reads values with GETMETADATA), one per changed entry per batch. The mailbox is matched as MailboxName is (the
  selected one too: SELECTED takes message events only, §6.1); ServerMetadataChange belongs to no mailbox, so
  any group naming it asks for it. The change records (store/sqlite/metadata.py invariant 4) reach only the
  feed of the user whose row changed: a "/private" entry its own user's, a mailbox's "/shared" entry its
  owner's and the sessions watching that mailbox; of another user's mailbox only "/shared" entries are told
  (invariant 6).

A mailbox matches the first group whose filter covers it and that names the event, and none if the first
group that covers it has NONE (as Dovecot and mox read §6); the selected mailbox's message events are the
SELECTED group's alone. PERSONAL is every mailbox of the user (not "Other Users": invariant 6), INBOXES is INBOX
(deliveries go nowhere else), SUBSCRIBED follows the subscriptions as they change (§6.4), SUBTREE a name and
everything under it, MAILBOXES exactly the names given. A name no mailbox has yet is no error.

Between commands `Session.read_more` waits on the client and on the feed at once (`read_or_push`), so
non-selected events and SELECTED's arrivals and flag changes reach an idle client without IDLE (§3: "at any
time"); during a command they wait for its end, and IDLE (§4) reports them as it reports the rest.

AnnotationChange needs ANNOTATE (RFC 5257), which this server does not offer: a NOTIFY naming it (or any other
event not in `SUPPORTED`) is refused `NO [BADEVENT (...)]` with the events that are supported (§3.1), and
changes nothing. MailboxMetadataChange and ServerMetadataChange are supported, as §5.6 and §5.7 require of a
server with METADATA.

Invariants
1. Bounded: at most `MAX_QUEUED` STATUS mailboxes, LIST lines and METADATA entries wait for the client, and at most
   `MAX_QUEUED` changes wait in a SELECTED-DELAYED mailbox; past either, or when the change feed itself
   overflows (hub.SubscriptionOverflow), the session says `* OK [NOTIFICATIONOVERFLOW]` and behaves as after
   NOTIFY NONE (RFC 5465 §5.8): the client re-synchronises and sets NOTIFY again.
2. NOTIFY replaces the previous settings whole (§3.1); `NOTIFY SET STATUS` writes a STATUS for each matching
   mailbox other than the selected one before its OK.
3. The selected mailbox's view (sequence numbers, state.py invariant 1) changes only when its EXISTS and
   EXPUNGE responses are written, whatever NOTIFY drops.
4. The name map (`names`, mailbox id -> name) and the subscriptions are the user's own, kept current from the
   feed, so each decision is a few dictionary lookups, never a store call per change.
5. A NOTIFY has at most `MAX_GROUPS` groups and `MAX_NAMES` mailbox names (else `NO [LIMIT]`, RFC 5530), so
   matching one change costs at most `MAX_GROUPS` set lookups per level of its name.
6. Other users' mailboxes (ACL, RFC 4314): NOTIFY resolves those its SUBTREE, MAILBOXES and SUBSCRIBED filters
   name among the ones the user may read ("r", `Store.list_shared_mailboxes`), maps them to their "Other Users/"
   names and watches them on the feed (`watch_also`); nothing else of their owners reaches the session, and of
   their metadata only "/shared" entries (another user's "/private" ones are never told). Each STATUS or
   METADATA of one reads the rights again first: without "r" nothing is written (never a leak). A mailbox shared,
   renamed or deleted after the NOTIFY joins or leaves the set at the next NOTIFY. The owner's mailbox events
   (names in the owner's namespace) are never turned into LIST responses.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from postroom.store import names as store_names
from postroom.store.api import Change, ChangeKind, NotFound, StoreError, StoreUnavailable
from postroom.store.hub import SubscriptionOverflow

from . import acl
from . import parser as P
from .arguments import stored_name, wire_name
from .errors import No, Result
from .mailboxes import status_line
from .metadata import entry_name
from .session import Session
from .state import Selected

log = logging.getLogger("postroom.imap")

MAX_QUEUED = 1000  # invariant 1
MAX_GROUPS = 100  # event groups of one NOTIFY: each change is matched against them (invariant 5)
MAX_NAMES = 1000  # SUBTREE and MAILBOXES names of one NOTIFY, all groups together
SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange",
             "MailboxMetadataChange", "ServerMetadataChange")
STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN")


def status_items(s: Session) -> tuple[str, ...]:
    """The STATUS items of a notification: RFC 5465 §5.2's four, and HIGHESTMODSEQ once the session has
    CONDSTORE on (RFC 5465 §5.2, RFC 7162 §3.1.7), so a client can tell a flag change from nothing."""
    return (*STATUS_ITEMS, "HIGHESTMODSEQ") if s.condstore else STATUS_ITEMS
_MESSAGE_CHANGES = {ChangeKind.APPEND: "MessageNew", ChangeKind.EXPUNGE: "MessageExpunge",
                    ChangeKind.FLAGS: "FlagChange"}
_MAILBOX_CHANGES = {ChangeKind.MAILBOX_CREATED, ChangeKind.MAILBOX_DELETED, ChangeKind.MAILBOX_RENAMED}
_SUBSCRIPTION_CHANGES = {ChangeKind.MAILBOX_SUBSCRIBED, ChangeKind.MAILBOX_UNSUBSCRIBED}


@dataclass(frozen=True, slots=True)
class Group:
    """An event group for mailboxes other than the selected one, names as stored."""

    filter: str  # INBOXES PERSONAL SUBSCRIBED SUBTREE MAILBOXES
    names: frozenset[str]
    events: frozenset[str]  # empty: NONE


class Notifier:
    """One session's NOTIFY settings and what they have queued for the client (module doc)."""

    def __init__(self, groups: list[Group], selected: P.NotifyGroup | None, names: dict[int, str],
                 subscribed: set[str] | None) -> None:
        self.groups = groups
        self.selected_events = frozenset(selected.events) if selected is not None else frozenset()
        self.immediate = selected is not None and selected.filter == "SELECTED"
        self.fetch_atts = selected.fetch_atts if selected is not None else ()
        self.names = names  # invariant 4
        self.subscribed = subscribed  # None: no SUBSCRIBED filter, so not kept
        # mailbox ids due a STATUS, LIST lines, (mailbox id, entry) due a METADATA; in order (invariant 1)
        self.queue: list[int | bytes | tuple[int, str]] = []
        self.queued_ids: set[int] = set()
        self.queued_entries: set[tuple[int, str]] = set()  # the METADATA items in `queue`
        self.stale: Selected | None = None  # the selected mailbox whose changes were dropped

    @property
    def pushes(self) -> bool:
        """Whether anything may be written between commands."""
        return bool(self.groups) or (self.immediate and bool(self.selected_events))

    # ---- matching (RFC 5465 §6)
    def _covers(self, g: Group, name: str) -> bool:
        f = g.filter
        if f == "PERSONAL":  # RFC 5465 §6: the personal namespace, not "Other Users" (acl.py)
            return not acl.in_other_namespace(name)
        if f == "INBOXES":
            return name == "INBOX"
        if f == "SUBSCRIBED":
            return self.subscribed is not None and name in self.subscribed
        if name in g.names:
            return True
        return f == "SUBTREE" and any(p in g.names for p in store_names.parents(name))

    def match(self, name: str, event: str) -> bool:
        """Whether `event` in the mailbox `name` (not the selected one's message events) is to be told."""
        for g in self.groups:
            if self._covers(g, name):
                if not g.events:
                    return False  # NONE for these mailboxes
                if event in g.events:
                    return True
        return False

    def wants_status(self, name: str) -> bool:
        return any(self.match(name, e) for e in ("MessageNew", "MessageExpunge", "FlagChange"))

    def wants_watch(self, name: str) -> bool:
        """Whether anything of the (shared) mailbox `name` is to be told: a STATUS or its metadata."""
        return self.wants_status(name) or self.match(name, "MailboxMetadataChange")

    def wants_server_metadata(self) -> bool:
        """ServerMetadataChange (RFC 5465 §5.7) belongs to no mailbox: any group naming it asks for it."""
        return any("ServerMetadataChange" in g.events for g in self.groups)

    # ---- taking changes (synchronous: called while the feed is drained)
    def take(self, s: Session, ch: Change) -> None:
        kind = ch.kind
        sel = s.sel
        if s.user is not None and ch.user_id != s.user.id:  # a watched mailbox of another user (invariant 6)
            if kind is ChangeKind.MAILBOX_ACL and sel is not None and ch.mailbox_id == sel.id:
                sel.absorb(ch)  # its rights are read again (acl.refresh), IDLE included
            elif kind is ChangeKind.MAILBOX_DELETED or kind is ChangeKind.MAILBOX_RENAMED:
                self.names.pop(ch.mailbox_id, None)  # its names are the owner's: it leaves the NOTIFY set
            if kind is ChangeKind.METADATA and ch.mailbox_id and ch.name.startswith("/shared"):
                pass  # the owner's "/shared" entry of a watched mailbox; never another user's "/private" one
            elif kind not in _MESSAGE_CHANGES and kind is not ChangeKind.MAILBOX_KEYWORDS:
                return
        elif kind is ChangeKind.MAILBOX_CREATED or kind is ChangeKind.MAILBOX_RENAMED:  # invariant 4
            self.names[ch.mailbox_id] = ch.name
        elif kind is ChangeKind.MAILBOX_DELETED:
            self.names.pop(ch.mailbox_id, None)
        elif self.subscribed is not None and kind is ChangeKind.MAILBOX_SUBSCRIBED:
            self.subscribed.add(ch.name)  # (an unsubscribed name leaves the set below, once it was matched)
        if kind in _MESSAGE_CHANGES or kind is ChangeKind.MAILBOX_KEYWORDS:
            if sel is not None and ch.mailbox_id == sel.id:
                self._selected(s, sel, ch)
                return
            event = _MESSAGE_CHANGES.get(kind)
            if event is None or not self.groups or ch.mailbox_id in self.queued_ids:
                return
            name = self.names.get(ch.mailbox_id)
            if name is None or self.match(name, event):  # an unknown id is looked up when written
                self.queued_ids.add(ch.mailbox_id)
                self._queue(s, ch.mailbox_id)
        elif kind in _MAILBOX_CHANGES:
            if self.match(ch.name, "MailboxName") or (ch.old_name and self.match(ch.old_name, "MailboxName")):
                self._queue(s, self._list_line(s, ch))
        elif kind is ChangeKind.METADATA:
            self._metadata_change(s, ch)
        elif kind in _SUBSCRIPTION_CHANGES:
            if self.match(ch.name, "SubscriptionChange"):  # SUBSCRIBED covers a name being unsubscribed too
                self._queue(s, self._list_line(s, ch))
            if self.subscribed is not None and kind is ChangeKind.MAILBOX_UNSUBSCRIBED:
                self.subscribed.discard(ch.name)

    def _metadata_change(self, s: Session, ch: Change) -> None:
        """RFC 5465 §5.6, §5.7: an entry of a mailbox or of the server changed; its name is told when written
        (`_metadata`), the mailbox's rights read again then (invariant 6)."""
        if not self.groups:
            return  # SELECTED takes message events only (§6.1): no other group, nothing to tell
        if not ch.mailbox_id:
            wanted = self.wants_server_metadata()
        else:
            name = self.names.get(ch.mailbox_id)
            wanted = name is None or self.match(name, "MailboxMetadataChange")  # unknown: looked up when written
        item = (ch.mailbox_id, ch.name)
        if wanted and item not in self.queued_entries:
            self.queued_entries.add(item)
            self._queue(s, item)

    def _selected(self, s: Session, sel: Selected, ch: Change) -> None:
        events = self.selected_events
        if ch.kind is ChangeKind.FLAGS:
            wanted = "FlagChange" in events
            if not wanted and sel.contexts:
                # RFC 5267 UPDATE contexts follow flags all the same (update.py)
                if sel.context_change(ch) > MAX_QUEUED:
                    s.overflowed = True  # invariant 1
        elif ch.kind is ChangeKind.MAILBOX_KEYWORDS:
            wanted = bool(events)  # FLAGS must announce a keyword before a FETCH shows it (state.py 5)
        else:
            wanted = "MessageNew" in events  # MessageExpunge comes with it (RFC 5465 §5)
            if not wanted:
                self.stale = sel  # invariant 3: the view stays, and is re-read if asked for again
        if wanted:
            sel.absorb(ch)
            if len(sel.pending) > MAX_QUEUED:
                s.overflowed = True  # invariant 1

    def _queue(self, s: Session, item: int | bytes | tuple[int, str]) -> None:
        if len(self.queue) >= MAX_QUEUED:
            s.overflowed = True  # invariant 1
            return
        self.queue.append(item)

    def _list_line(self, s: Session, ch: Change) -> bytes:
        """The LIST response for a mailbox event (RFC 5465 §5.4, §5.5)."""
        kind = ch.kind
        attrs: list[bytes] = []
        extra = b""
        if kind is ChangeKind.MAILBOX_DELETED:
            attrs.append(b"\\NonExistent")
        elif kind in _SUBSCRIPTION_CHANGES:
            if not ch.mailbox_id:
                attrs.append(b"\\NonExistent")
            if kind is ChangeKind.MAILBOX_SUBSCRIBED:
                attrs.append(b"\\Subscribed")
        elif kind is ChangeKind.MAILBOX_RENAMED:
            extra = b' ("OLDNAME" (' + wire_name(s, ch.old_name) + b"))"  # RFC 5465 §5.4 mbox-list-oldname
        return b"* LIST (" + b" ".join(attrs) + b') "/" ' + wire_name(s, ch.name) + extra + b"\r\n"

    # ---- writing
    async def report(self, s: Session, top: int | None) -> None:
        """Write what is queued: the MessageNew FETCH of arrivals above UID `top` that the selected mailbox's
        report just announced (None: no report ran), then the STATUS and LIST responses, in order."""
        sel = s.sel
        if top is not None and self.fetch_atts and sel is not None:
            new = list(sel.uids[bisect.bisect_right(sel.uids, top):])
            if new:
                await fetch_new(s, new, self.fetch_atts)
        queue, self.queue = self.queue, []
        self.queued_ids.clear()
        self.queued_entries.clear()
        for item in queue:
            if isinstance(item, bytes):
                s.write(item)
            elif isinstance(item, tuple):
                line = await self._metadata(s, *item)
                if line:
                    s.write(line)
            else:
                line = await self._status(s, item)
                if line:
                    s.write(line)
            await s.maybe_flush()

    async def _status(self, s: Session, mailbox_id: int) -> bytes | None:
        if s.sel is not None and s.sel.id == mailbox_id:
            return None  # its changes are told by EXISTS, EXPUNGE and FETCH
        mbox = await s.store.get_mailbox_by_id(mailbox_id)
        if mbox is None or s.user is None:
            return None
        if mbox.user_id != s.user.id:  # invariant 6: one of the shared mailboxes NOTIFY resolved, with "r" now
            name = self.names.get(mailbox_id)
            if name is None or "r" not in await s.store.my_rights(s.user.id, mailbox_id):  # RFC 4314 §4: STATUS
                return None
            mbox = dataclasses.replace(mbox, name=name)
        elif self.names.get(mailbox_id) is None:
            self.names[mailbox_id] = mbox.name
            if not self.wants_status(mbox.name):
                return None
        try:
            return await status_line(s, mbox, status_items(s))
        except NotFound:
            return None  # deleted meanwhile: MailboxName says so, if asked

    async def _metadata(self, s: Session, mailbox_id: int, entry: str) -> bytes | None:
        """The unsolicited METADATA response naming a changed entry (RFC 5464 §4.4.2, RFC 5465 §5.6: the entry
        name only; the client asks GETMETADATA for the value), or None if it is not to be told."""
        if s.user is None:
            return None
        if not mailbox_id:
            mailbox = b'""'  # RFC 5464 §5: the empty mailbox name is the server
        else:
            mbox = await s.store.get_mailbox_by_id(mailbox_id)
            if mbox is None:
                return None
            name = self.names.get(mailbox_id)
            if mbox.user_id != s.user.id:  # invariant 6: a shared mailbox NOTIFY resolved, still readable
                if name is None or "r" not in await s.store.my_rights(s.user.id, mailbox_id):  # RFC 5464 §3.3
                    return None
            elif name is None:
                self.names[mailbox_id] = name = mbox.name
                if not self.match(name, "MailboxMetadataChange"):
                    return None
            mailbox = wire_name(s, name)
        # RFC 5464 §5: metadata-resp = "METADATA" SP mailbox SP (entry-values / entry-list); the unsolicited
        # form is the entry-list, entry names without parentheses or values.
        return b"* METADATA " + mailbox + b" " + entry_name(entry) + b"\r\n"

    def overflow(self, s: Session) -> None:
        """RFC 5465 §5.8: too much to tell; from now on as after NOTIFY NONE (invariant 1)."""
        had = self.pushes or bool(self.selected_events)
        self.groups = []
        self.selected_events = frozenset()
        self.immediate = False
        self.fetch_atts = ()
        self.queue = []
        self.queued_ids.clear()
        self.queued_entries.clear()
        if s.sel is not None:
            self.stale = s.sel
        if s.sub is not None:
            s.sub.watch_also(())
        if had:
            s.write(b"* OK [NOTIFICATIONOVERFLOW] Too many notifications; NOTIFY is now NONE\r\n")

    async def read_or_push(self, s: Session) -> bytes:
        """The next bytes from the client; meanwhile each change of the feed is told at once (module doc)."""
        read_task: asyncio.Task[bytes] = asyncio.ensure_future(s.conn.read_some(interruptible=True))
        change_task: asyncio.Task[Any] | None = None
        try:
            while True:
                if change_task is None and s.sub is not None and s.notifier is self and self.pushes:
                    change_task = asyncio.ensure_future(s.sub.get())
                waiting: set[asyncio.Task[Any]] = {read_task}
                if change_task is not None:
                    waiting.add(change_task)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if change_task is not None and change_task in done:
                    task, change_task = change_task, None
                    try:
                        s.take_change(task.result())
                    except SubscriptionOverflow:
                        s.overflowed = True
                    try:
                        await self.push(s)
                    except StoreUnavailable:  # told later (session invariant 7); the engine logged the outage
                        pass
                    except StoreError:  # the server's fault, not the client's: say so in the log, go on
                        log.exception("NOTIFY push failed (session %s)", s.conn.session_id)
                if read_task in done:
                    return read_task.result()
        finally:
            for t in (read_task, change_task):
                if t is not None and not t.done():
                    t.cancel()
                    with contextlib.suppress(BaseException):
                        await t

    async def push(self, s: Session) -> None:
        """Tell what the feed has brought while no command runs: no EXPUNGE (RFC 9051 §7.5.1)."""
        s.drain_changes()
        if s.overflowed or (self.immediate and self.selected_events):
            await s.notify(allow_expunge=False)
        else:
            await self.report(s, None)
        await s.flush()


async def fetch_new(s: Session, uids: list[int], atts: tuple[P.FetchAtt, ...]) -> None:
    """RFC 5465 §5.2: the MessageNew fetch-att list, answered for new messages as a UID FETCH would be."""
    from .fetch import fetch  # fetch imports messages, which imports session: late, as the handlers do

    ranges: list[tuple[int, int]] = []
    for u in uids:
        if ranges and ranges[-1][1] == u - 1:
            ranges[-1] = (ranges[-1][0], u)
        else:
            ranges.append((u, u))
    cmd = P.Command("*", "FETCH", P.FetchArgs(P.SeqSet(tuple(ranges)), atts), uid=True)
    with contextlib.suppress(No):  # BINARY of an unknown encoding: nothing more to tell of that message
        await fetch(s, cmd)


async def _shared(s: Session, groups: list[Group], subscribed: set[str] | None) -> dict[int, str]:
    """The mailboxes of other users a NOTIFY's filters name (SUBTREE, MAILBOXES, SUBSCRIBED: PERSONAL and
    INBOXES never cover them) that the user may read ("r", RFC 4314 §4 STATUS), id -> the session's name."""
    if not any(g.filter in ("SUBTREE", "MAILBOXES", "SUBSCRIBED") and g.events for g in groups):
        return {}
    assert s.user is not None
    probe = Notifier(groups, None, {}, subscribed)
    out: dict[int, str] = {}
    for shared in await s.store.list_shared_mailboxes(s.user.id, "r"):
        name = acl.shared_name(shared.owner, shared.mailbox.name)
        if probe.wants_watch(name):
            out[shared.mailbox.id] = name
    return out


async def notify(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.NotifyArgs) and s.user is not None
    old = s.notifier
    groups: list[Group] = []
    selected: P.NotifyGroup | None = None
    if a.groups is not None:
        if len(a.groups) > MAX_GROUPS or sum(len(g.mailboxes) for g in a.groups) > MAX_NAMES:
            raise No(f"At most {MAX_GROUPS} event groups and {MAX_NAMES} mailbox names", "LIMIT")  # invariant 5
        unsupported = sorted({e for g in a.groups for e in g.events} - set(SUPPORTED))
        if unsupported:
            # RFC 5465 §3.1: an event the server does not support is NO [BADEVENT], which lists what it does.
            raise No(f"Unsupported NOTIFY event {unsupported[0][:40]}", "BADEVENT (" + " ".join(SUPPORTED) + ")")
        for g in a.groups:
            if g.filter in ("SELECTED", "SELECTED-DELAYED"):
                selected = g
            else:
                groups.append(Group(g.filter, frozenset(stored_name(s, n) for n in g.mailboxes),
                                    frozenset(g.events)))
    s.drain_changes()  # what came before this command goes by the settings it came under
    names = {m.id: m.name for m in await s.store.list_mailboxes(s.user.id)} if groups else {}
    subscribed = (set(await s.store.list_subscriptions(s.user.id))
                  if any(g.filter == "SUBSCRIBED" for g in groups) else None)
    shared = await _shared(s, groups, subscribed)
    names.update(shared)
    if s.sub is not None:
        s.sub.watch_also(shared)  # invariant 6 (none after NOTIFY NONE)
    new = Notifier(groups, selected, names, subscribed)
    if old is not None:
        new.queue, new.queued_ids, new.stale = old.queue, old.queued_ids, old.stale  # already due: still told
        new.queued_entries = old.queued_entries
    s.notifier = new  # invariant 2: replaces the previous settings whole
    if new.selected_events and s.sel is not None and new.stale is s.sel:
        new.stale = None
        await s.resync_selected(allow_expunge=True)  # what was dropped while the mailbox was not watched
    if a.status:  # invariant 2; RFC 5465 §3.1
        own = [m for m in await s.store.list_mailboxes(s.user.id) if not acl.in_other_namespace(m.name)]
        for mbox in sorted(own, key=lambda m: m.name):
            if (s.sel is None or mbox.id != s.sel.id) and new.wants_status(mbox.name):
                with contextlib.suppress(NotFound):
                    s.write(await status_line(s, mbox, status_items(s)))
                await s.maybe_flush()
        for mailbox_id, name in sorted(shared.items(), key=lambda item: item[1]):
            if (s.sel is None or mailbox_id != s.sel.id) and new.wants_status(name):
                line = await new._status(s, mailbox_id)
                if line:
                    s.write(line)
                await s.maybe_flush()
    return "", "NOTIFY completed"
