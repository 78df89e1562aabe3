"""The states of an IMAP session (RFC 9051 §3), and the Selected state: sequence numbers, \\Recent, changes, `$`.

Theory of operation
-------------------
A session is in one of `NOT_AUTH`, `AUTH`, `SELECTED` or `LOGOUT` (RFC 9051 §3, figure 1); `Session.state`
holds it. The command table (commands.py) gives each command the set of states it is valid in: `ANY`
(§6.1), `NOT_AUTH_ONLY` (§6.2), `AUTHED` (§6.3: authenticated or selected), `AUTH_ONLY` (ENABLE, RFC 5161
§3.1: before a mailbox is selected), `ONLY_SELECTED` (§6.4). Only the handlers of LOGIN, AUTHENTICATE,
UNAUTHENTICATE, SELECT, EXAMINE, CLOSE, UNSELECT, STARTTLS and LOGOUT move it.

`Selected` holds what one session knows of its selected mailbox: the UIDs it has announced, in order (the
message sequence number of `uids[i]` is i + 1), and the changes the hub delivered that it has not reported
yet. It keeps no flags: FETCH reads them from the store, and flag changes from other sessions are reported
from the change records themselves (`Change.flags`, `Change.keywords`).

`absorb(change)` queues a change; `report(allow_expunge)` turns the queued changes into untagged responses:
FLAGS and PERMANENTFLAGS when the mailbox's keyword set grew, EXPUNGE (only when allowed, RFC 9051 §7.5.1:
never during FETCH, STORE or SEARCH, nor between commands), EXISTS and RECENT for arrivals, FETCH (FLAGS) for
flag changes of announced messages.

CONDSTORE and QRESYNC (RFC 7162): once a CONDSTORE enabling command was seen (`condstore`), every FETCH written
here carries the message's MODSEQ (§3.1); while expunges are held back, a FETCH may show a MODSEQ above theirs,
so `report` then adds `OK [HIGHESTMODSEQ n]` below the lowest held one (§3.2: the client must not skip them on a
later resync). Once QRESYNC is enabled (`qresync`), removals are announced as `VANISHED uids` instead of EXPUNGE
(§3.2.10.2). `expunged(uids)` is the one place that announces removals, for every caller (EXPUNGE, UID EXPUNGE,
MOVE, changes from other sessions in NOOP and IDLE); `vanished_lines` writes VANISHED, also `(EARLIER)`.

UIDONLY (RFC 9586, `uidonly`): message data is `* uid UIDFETCH (...)` instead of `* n FETCH (...)` and removals
are VANISHED even without QRESYNC (invariant 8; the rules are in imap/uidonly.py).

Keywords (RFC 9051 §2.3.2, §7.3.5 FLAGS: "The update from the FLAGS response MUST be recorded by the client"):
`keywords` is the set this session has announced with FLAGS (at SELECT: the mailbox's keyword set, store
invariant 9). `announce(kws)` returns the FLAGS and PERMANENTFLAGS responses for a set grown by `kws`, or
nothing. The store's MAILBOX_KEYWORDS change says the set grew, and every writer of a FETCH (FLAGS ...) calls
`announce` with the keywords it is about to show, so a keyword whose change has not reached this session yet
(the store read saw the commit before the hub did) is announced in time too.

\\Recent (RFC 3501 §2.3.2; dropped by RFC 9051): the store keeps, per mailbox, the highest UID some session has
been given as recent (`Store.claim_recent`, persistent, so a restart makes nothing old recent again). A rev1
SELECT (not EXAMINE, RFC 3501 §6.3.2) claims everything above it; a selected read-write rev1 session claims
again when it learns of arrivals (`Session.notify`), and `grant_recent` records each range it got. EXAMINE
shows what nobody has claimed as recent, without claiming it.

Invariants
1. `uids` is strictly ascending and is exactly the client's view: an arrival enters it only when EXISTS is
   written, an expunged UID leaves it only when its EXPUNGE is written.
2. An expunge that may not be reported yet stays in `held`; the message keeps its sequence number until then.
3. Changes this session made itself are reported by the command that made them: their MODSEQs go into
   `own_modseqs` and their hub echoes are dropped; expunged UIDs go into `gone` so a late APPEND echo of a
   message already expunged is dropped too.
4. `saved` (`$`, RFC 5182) holds UIDs, so expunges and arrivals never make it point at another message.
5. No FETCH response carries a keyword before a FLAGS response of this session has listed it; `keywords` only
   grows while the mailbox is selected (at most `names.MAX_MAILBOX_KEYWORDS` plus what one listing carries).
6. A VANISHED response without (EARLIER) names only announced UIDs, each once, and removes them from `uids`
   like EXPUNGE does (RFC 7162 §3.2.10.2); one response line holds at most `VANISHED_RANGES` ranges.
7. `rights` is None for a mailbox of the session's own user (every right); for another user's mailbox it holds
   the session user's RFC 4314 rights as last read (imap/acl.py reads them again before every command and when
   a MAILBOX_ACL change arrives: `acl_changed`).
8. Once UIDONLY is enabled (`uidonly`, RFC 9586) no response written here carries a message number: message
   data starts `* uid UIDFETCH (` (`fetch_head`, which every writer of message data uses) and removals are
   VANISHED. `uids` is kept all the same: it is still the client's view (invariant 1, imap/uidonly.py).
9. `contexts` (RFC 5267 UPDATE contexts, context.py) live and die with this state: CLOSE, UNSELECT and another
   SELECT end their updates (§4.3). A result that is expunged is removed from every context, and its
   REMOVEFROM written, in `expunged`, before the EXPUNGE or VANISHED that announces it.
10. `uids` may be one array shared by the sessions of this process that selected the same mailbox and saw the
   same UIDs (`shared_view`; `uids_shared`): it is never changed in place while shared. The first change copies
   it (`_own_uids`), so each session's view stays its own (invariant 1). Several clients of one user idling on
   one INBOX then hold 4 bytes a message once, not once each (bench/RESULTS.md, memory per idle session).
11. An idle session's state holds nothing it does not use: `Selected` has slots, and `held`, `gone` and
   `own_modseqs` are the one shared empty `NO_UIDS` (a frozenset, so no session can change it) until their
   first member, when `_mutable` gives the session a set of its own; never changed in place otherwise.
   Likewise `recent_more`, `saved` and `context_changes` are the empty tuple until they hold something. The
   `mailbox` record is one per mailbox among sessions that saw it alike (`shared_mailbox`).
"""

from __future__ import annotations

import bisect
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from postroom.store import names
from postroom.store.api import FLAG_NAMES, Change, ChangeKind, Mailbox, flags_allowed

from . import encoder
from .context import UpdateContext, removal_lines

NOT_AUTH, AUTH, SELECTED, LOGOUT = "not-authenticated", "authenticated", "selected", "logout"
ANY = frozenset({NOT_AUTH, AUTH, SELECTED})
AUTHED = frozenset({AUTH, SELECTED})
ONLY_SELECTED = frozenset({SELECTED})
NOT_AUTH_ONLY = frozenset({NOT_AUTH})
AUTH_ONLY = frozenset({AUTH})

SYSTEM_FLAGS = " ".join(FLAG_NAMES.values()).encode()
_MESSAGE_KINDS = (ChangeKind.APPEND, ChangeKind.FLAGS, ChangeKind.EXPUNGE)
VANISHED_RANGES = 1000  # ranges in one VANISHED line (invariant 6): a few KB, whatever was removed
NO_UIDS: frozenset[int] = frozenset()  # the one empty `held` / `gone` / `own_modseqs` of every session (invariant 11)


def uid_ranges(items: Iterable[int | tuple[int, int]]) -> list[tuple[int, int]]:
    """UIDs and (lo, hi) ranges as sorted, merged ranges."""
    pairs = sorted((x, x) if isinstance(x, int) else x for x in items)
    out: list[tuple[int, int]] = []
    for lo, hi in pairs:
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def in_ranges(ranges: Sequence[tuple[int, int]]) -> Callable[[int], bool]:
    """A membership test for sorted, merged ranges (`uid_ranges`): one bisection per number."""
    starts = [lo for lo, _ in ranges]

    def inside(n: int) -> bool:
        i = bisect.bisect_right(starts, n) - 1
        return i >= 0 and n <= ranges[i][1]

    return inside


def missing_ranges(ranges: Sequence[tuple[int, int]], present: Sequence[int]) -> list[tuple[int, int]]:
    """The numbers of sorted, merged `ranges` that are not in `present` (ascending), as ranges: the QRESYNC
    fallback's "every UID asked about that is not in the mailbox" (RFC 7162 §3.2.5.2, §3.2.6). Work: the
    ranges plus the present UIDs inside them."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        start = lo
        i = bisect.bisect_left(present, lo)
        while i < len(present) and present[i] <= hi:
            if present[i] > start:
                out.append((start, present[i] - 1))
            start = present[i] + 1
            i += 1
        if start <= hi:
            out.append((start, hi))
    return out


def seq_match_floor(seqs: Sequence[tuple[int, int]], uids: Sequence[tuple[int, int]], view: Sequence[int]) -> int:
    """RFC 7162 §3.2.5.2 seq-match-data: the client's (message number, UID) pairs, in order, checked against
    `view` until the first that does not match; the UID of the last matching one (0 if none). The client knows
    of every expunge up to it, so the fallback reports none at or below it. At most len(view) + 1 pairs are
    looked at, however large the sets."""

    def each(ranges: Sequence[tuple[int, int]]) -> Iterator[int]:
        for lo, hi in ranges:
            yield from range(lo, hi + 1)

    floor = 0
    for seq, uid in zip(each(seqs), each(uids)):
        if not 1 <= seq <= len(view) or view[seq - 1] != uid:
            break
        floor = uid
    return floor


def vanished_lines(items: Iterable[int | tuple[int, int]], earlier: bool = False) -> list[bytes]:
    """`* VANISHED [(EARLIER)] uid-set` (RFC 7162 §3.2.10) for UIDs and UID ranges, in as many lines as it takes
    at `VANISHED_RANGES` ranges a line; [] for none."""
    ranges = uid_ranges(items)
    head = b"* VANISHED (EARLIER) " if earlier else b"* VANISHED "
    out = []
    for i in range(0, len(ranges), VANISHED_RANGES):
        part = ranges[i:i + VANISHED_RANGES]
        out.append(head + b",".join(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi) for lo, hi in part) + b"\r\n")
    return out


_VIEWS: weakref.WeakValueDictionary[int, array[int]] = weakref.WeakValueDictionary()


def shared_view(mailbox_id: int, uids: array[int]) -> array[int]:
    """The array a session that just listed `uids` of `mailbox_id` keeps, as `Selected.uids` with `uids_shared`
    (invariant 10): an equal one another session of this process holds already, else `uids` itself, remembered
    for the next session. Every holder treats it as shared (it cannot know whether a later session will take
    it too) and copies it before its first change. Weakly held: it goes when the last session leaves it."""
    known = _VIEWS.get(mailbox_id)
    if known is not None and known == uids:  # C-speed comparison, after a listing that cost far more
        return known
    _VIEWS[mailbox_id] = uids
    return uids


_MAILBOXES: weakref.WeakValueDictionary[int, Mailbox] = weakref.WeakValueDictionary()


def shared_mailbox(mailbox: Mailbox) -> Mailbox:
    """The `Mailbox` record a session that just selected `mailbox` keeps (invariant 11): an equal one another
    session of this process holds, else `mailbox`, remembered for the next. Equal records are interchangeable
    (`Mailbox` is frozen); weakly held, it goes with the last session that holds it."""
    known = _MAILBOXES.get(mailbox.id)
    if known is not None and known == mailbox:
        return known
    _MAILBOXES[mailbox.id] = mailbox
    return mailbox


@dataclass(slots=True)  # invariant 11: no per-session attribute dictionary
class Selected:
    mailbox: Mailbox
    readonly: bool
    uids: array[int]  # 4 bytes a message: a session on a 100,000-message mailbox holds 400 KB, not 3.6 MB
    rev2: bool = False
    recent_lo: int = 0  # UIDs in [recent_lo, recent_hi] are \Recent for this session (rev1)
    recent_hi: int = -1
    recent_more: Sequence[tuple[int, int]] = ()  # later claimed ranges, disjoint (a list once any: invariant 11)
    recent_seen: int = 0  # the store's watermark as of this session's last claim: no arrival <= it is ours
    pending: list[Change] = field(default_factory=list)
    # Invariant 11: these three are the shared `NO_UIDS` until their first member (216 bytes each while empty)
    held: AbstractSet[int] = NO_UIDS
    gone: AbstractSet[int] = NO_UIDS
    own_modseqs: AbstractSet[int] = NO_UIDS
    saved: Sequence[int] = ()  # replaced whole by SEARCH ... SAVE, never changed in place
    modseq: int = 0  # changes up to this MODSEQ are known to the client (for the resync after an overflow)
    keywords: dict[str, str] = field(default_factory=dict)  # announced: lower case -> spelling (invariant 5)
    condstore: bool = False  # a CONDSTORE enabling command was seen: FETCHes carry MODSEQ (RFC 7162 §3.1)
    qresync: bool = False  # QRESYNC enabled: VANISHED instead of EXPUNGE (RFC 7162 §3.2.10.2)
    uidonly: bool = False  # UIDONLY enabled: UIDFETCH, VANISHED, no message numbers (RFC 9586, invariant 8)
    held_modseq: int = 0  # the lowest MODSEQ among `held` (0 when none is held)
    rights: str | None = None  # RFC 4314 rights on another user's mailbox; None: the user's own (invariant 7)
    acl_changed: bool = False  # a MAILBOX_ACL change of this mailbox arrived since `rights` was read
    contexts: dict[str, UpdateContext] = field(default_factory=dict)  # RFC 5267 UPDATE contexts (invariant 9)
    context_changes: Sequence[Change] = ()  # changes for the contexts alone (NOTIFY dropped): `context_change`
    uids_shared: bool = False  # `uids` is `shared_view`'s array, which other sessions read too (invariant 10)

    def __post_init__(self) -> None:
        if not isinstance(self.uids, array):
            self.uids = array("I", self.uids)  # UIDs are 32-bit (RFC 9051 §2.3.1.1)

    def _own_uids(self) -> array[int]:
        """`uids`, made this session's own first if it was shared (invariant 10): call before changing it."""
        if self.uids_shared:
            self.uids = array("I", self.uids)
            self.uids_shared = False
        return self.uids

    def _mutable(self, name: str) -> set[int]:
        """The set `held`, `gone` or `own_modseqs`, made this session's own first if it is still the shared
        empty `NO_UIDS` (invariant 11): call before changing it."""
        value = getattr(self, name)
        if not isinstance(value, set):
            value = set(value)
            setattr(self, name, value)
        return value

    def _add(self, name: str, n: int) -> None:
        self._mutable(name).add(n)

    def context_change(self, change: Change) -> int:
        """Queue `change` for the UPDATE contexts alone (NOTIFY did not want it); returns how many are queued."""
        queued = self.context_changes if isinstance(self.context_changes, list) else list(self.context_changes)
        queued.append(change)
        self.context_changes = queued
        return len(queued)

    def own_change(self, modseq: int) -> None:
        """This session made the change of MODSEQ `modseq` and reports it itself: its hub echo is dropped
        (invariant 3)."""
        self._add("own_modseqs", modseq)

    # ---- keywords (invariant 5)
    def learn(self, kws: Iterable[str]) -> bool:
        """Add `kws` to the announced set without announcing (SELECT writes its own FLAGS). True if it grew."""
        known = self.keywords
        grew = False
        for kw in kws:
            low = kw.lower()
            if low not in known:
                known[low] = kw
                grew = True
        return grew

    def announce(self, kws: Iterable[str]) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS for the announced set grown by `kws`, or [] if none of them is new."""
        return self.flags_responses() if self.learn(kws) else []

    def flags_line(self) -> bytes:
        """`* FLAGS (...)`: the system flags and every announced keyword (RFC 9051 §7.3.5)."""
        return b"* FLAGS (" + SYSTEM_FLAGS + self._keyword_text() + b")\r\n"

    def permanentflags_line(self) -> bytes:
        """`* OK [PERMANENTFLAGS (...)]` (RFC 9051 §7.1): none when read-only; `\\*` while keywords may be made;
        on another user's mailbox only the flags its rights let the user change (invariant 7, RFC 4314 §4)."""
        if self.readonly:
            return b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"
        more = b" \\*" if len(self.keywords) < names.MAX_MAILBOX_KEYWORDS else b""
        system, keywords = SYSTEM_FLAGS, self._keyword_text()
        if self.rights is not None:  # RFC 4314 §4: only what the user's rights let STORE change
            allowed = flags_allowed(self.rights)
            system = " ".join(n for f, n in FLAG_NAMES.items() if allowed & f).encode()
            if "w" not in self.rights:  # keywords need "w": none listed, and no \\* (no new ones either)
                keywords = more = b""
        return b"* OK [PERMANENTFLAGS (" + system + keywords + more + b")] Flags permitted\r\n"

    def flags_responses(self) -> list[bytes]:
        """The responses that announce the current set: FLAGS, and PERMANENTFLAGS unless read-only."""
        if self.readonly:  # PERMANENTFLAGS stays () for a read-only session
            return [self.flags_line()]
        return [self.flags_line(), self.permanentflags_line()]

    def _keyword_text(self) -> bytes:
        return "".join(" " + k for k in sorted(self.keywords.values())).encode("utf-8", "surrogateescape")

    @property
    def id(self) -> int:
        return self.mailbox.id

    @property
    def exists(self) -> int:
        return len(self.uids)

    def msn(self, uid: int) -> int:
        """Sequence number of an announced UID, 0 if not announced."""
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def fetch_head(self, uid: int, n: int) -> bytes:
        """The start of a message's data response: `* n FETCH (`, or `* uid UIDFETCH (` once UIDONLY is enabled
        (RFC 9586 §3.3, invariant 8)."""
        return b"* %d UIDFETCH (" % uid if self.uidonly else b"* %d FETCH (" % n

    def is_recent(self, uid: int) -> bool:
        return not self.rev2 and (self.recent_lo <= uid <= self.recent_hi
                                  or any(lo <= uid <= hi for lo, hi in self.recent_more))

    def grant_recent(self, lo: int, hi: int) -> None:
        """UIDs lo..hi were claimed for this session (`Store.claim_recent`); some may not be announced yet."""
        if hi < lo:
            return
        if self.recent_hi < self.recent_lo:
            self.recent_lo, self.recent_hi = lo, hi
        elif lo == self.recent_hi + 1 and not self.recent_more:
            self.recent_hi = hi
        elif self.recent_more and lo == self.recent_more[-1][1] + 1:
            more = self._more()
            more[-1] = (more[-1][0], hi)
        else:
            self._more().append((lo, hi))

    def _more(self) -> list[tuple[int, int]]:
        """`recent_more` as a list of this session's own (invariant 11: the empty tuple until its first range)."""
        more = self.recent_more if isinstance(self.recent_more, list) else list(self.recent_more)
        self.recent_more = more
        return more

    def recent_count(self) -> int:
        if self.rev2:
            return 0
        n = 0
        for r_lo, r_hi in ((self.recent_lo, self.recent_hi), *self.recent_more):
            n += max(0, bisect.bisect_right(self.uids, r_hi) - bisect.bisect_left(self.uids, r_lo))
        return n

    def may(self, right: str) -> bool:
        """Whether the session user has the RFC 4314 `right` on this mailbox (invariant 7)."""
        return self.rights is None or right in self.rights

    # ---- changes
    def absorb(self, change: Change) -> None:
        if change.mailbox_id != self.mailbox.id:
            return
        if change.kind is ChangeKind.MAILBOX_ACL:
            self.acl_changed = True
            return
        if change.kind in _MESSAGE_KINDS or change.kind is ChangeKind.MAILBOX_KEYWORDS:
            self.pending.append(change)

    def expunged(self, uids: Iterable[int]) -> list[bytes]:
        """Announce the removal of `uids` (in the order given) and drop them from the view: `* n EXPUNGE` each,
        numbered after the previous one went, or one VANISHED for the announced ones once QRESYNC or UIDONLY is
        enabled (invariants 1, 3, 6, 8 and 9). UIDs never announced are dropped silently."""
        uids = list(uids)
        # RFC 5267 §4.3.4: the REMOVEFROM of an expunged result before its EXPUNGE, numbered in the old view
        first = removal_lines(self.contexts, uids, self.msn) if self.contexts else []
        out: list[bytes] = []
        gone: list[int] = []
        vanished = self.qresync or self.uidonly  # RFC 7162 §3.2.10.2; RFC 9586 §3: no EXPUNGE, its number
        for uid in uids:
            n = self.removed(uid)
            if n:
                if vanished:
                    gone.append(uid)
                else:
                    out.append(b"* %d EXPUNGE\r\n" % n)
        if not self.held:
            self.held_modseq = 0
        return first + (vanished_lines(gone) if vanished else out)

    def removed(self, uid: int) -> int:
        """This session expunged `uid` and is about to write its EXPUNGE: returns its sequence number (0 if it
        was never announced) and drops it (invariants 1 and 3)."""
        self._add("gone", uid)
        if uid in self.held:
            self._mutable("held").discard(uid)
        n = self.msn(uid)
        if n:
            del self._own_uids()[n - 1]
        return n

    def report(self, allow_expunge: bool) -> list[bytes]:
        """Untagged responses for the queued changes (module doc)."""
        out: list[bytes] = []
        pending, self.pending = self.pending, []
        last = self.uids[-1] if self.uids else 0
        new: list[int] = []
        new_set: set[int] = set()
        flag_updates: dict[int, Change] = {}
        new_keywords: list[str] = []
        for ch in pending:
            self.modseq = max(self.modseq, ch.modseq)
            if ch.keywords and ch.kind is not ChangeKind.EXPUNGE:  # MAILBOX_KEYWORDS, and what messages carry
                new_keywords.extend(ch.keywords)
            if ch.kind is ChangeKind.MAILBOX_KEYWORDS:
                continue
            if ch.kind is ChangeKind.APPEND:
                if ch.uid > last and ch.uid not in new_set and ch.uid not in self.gone:
                    new.append(ch.uid)
                    new_set.add(ch.uid)
                    last = ch.uid
            elif ch.kind is ChangeKind.FLAGS:
                if ch.modseq in self.own_modseqs:
                    self._mutable("own_modseqs").discard(ch.modseq)
                    continue
                flag_updates[ch.uid] = ch
            elif ch.kind is ChangeKind.EXPUNGE:
                if ch.uid in new_set:
                    new.remove(ch.uid)
                    new_set.discard(ch.uid)
                    self._add("gone", ch.uid)
                elif ch.uid not in self.gone and self.msn(ch.uid):
                    if ch.uid not in self.held:
                        self.held_modseq = min(self.held_modseq or ch.modseq, ch.modseq)
                    self._add("held", ch.uid)
                flag_updates.pop(ch.uid, None)
        out.extend(self.announce(new_keywords))  # invariant 5: before any FETCH below
        if allow_expunge and self.held:
            out.extend(self.expunged(sorted(self.held)))
        for uid, ch in flag_updates.items():
            n = self.msn(uid)
            if n and uid not in self.held:
                line = self.fetch_head(uid, n) + b"FLAGS " + encoder.flag_list(ch.flags, ch.keywords,
                                                                              self.is_recent(uid))
                if not self.uidonly:  # a UIDFETCH names the UID already (invariant 8)
                    line += b" UID %d" % uid
                out.append(line + (b" MODSEQ (%d))\r\n" % ch.modseq if self.condstore else b")\r\n"))
        if new:
            self._own_uids().extend(new)
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            if not self.rev2:
                out.append(b"* %d RECENT\r\n" % self.recent_count())
        if len(self.gone) > 100_000:  # bound memory: very old expunges cannot echo any more
            self.gone = set(sorted(self.gone)[-10_000:])
        if len(self.own_modseqs) > 100_000:
            self.own_modseqs = set(sorted(self.own_modseqs)[-10_000:])
        if self.condstore and self.held and self.held_modseq:
            # RFC 7162 §3.2: MODSEQs shown while expunges wait must not let the client skip those on a resync.
            out.append(b"* OK [HIGHESTMODSEQ %d] Expunges pending\r\n" % max(self.held_modseq - 1, 1))
        return out

    def resync(self, current: list[tuple[int, int, int, frozenset[str]]]) -> None:
        """After a hub overflow: compare with the store's (uid, modseq, flags, keywords) of every message and
        queue the differences as changes: expunges, arrivals, and the flags of messages changed since
        `modseq` by someone else (this session's own changes are known by their MODSEQ)."""
        cur = {c[0] for c in current}
        uid_, mbox = self.mailbox.user_id, self.mailbox.id
        self.pending.clear()  # everything queued is in the listing too
        for uid in self.uids:
            if uid not in cur and uid not in self.held:  # removed after what the client knew: modseq + 1
                self.pending.append(Change(ChangeKind.EXPUNGE, uid_, mbox, uid, self.modseq + 1))
        last = self.uids[-1] if self.uids else 0
        top = self.modseq
        for uid, modseq, flags, keywords in current:
            top = max(top, modseq)
            if uid > last:
                self.pending.append(Change(ChangeKind.APPEND, uid_, mbox, uid, modseq))
            elif modseq > self.modseq and modseq not in self.own_modseqs:
                self.pending.append(Change(ChangeKind.FLAGS, uid_, mbox, uid, 0, flags, keywords))
        self.own_modseqs = NO_UIDS
        self.modseq = top
