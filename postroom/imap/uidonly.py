"""UIDONLY (RFC 9586): which commands a session that enabled it may no longer send. Sans-I/O.

Theory of operation
-------------------
`ENABLE UIDONLY` (RFC 9586 §3.1; ENABLE is only valid in the authenticated state here, so the mode is on before
any mailbox is selected) sets `Session.uidonly`, which SELECT/EXAMINE copy into `Selected.uidonly`. From then on
message sequence numbers go neither way:

* requests: `refusal(cmd)` names why a parsed command uses message numbers, and the session answers it
  `BAD [UIDREQUIRED]` (§3) before its handler runs. That is FETCH, STORE, COPY, MOVE, SEARCH, SORT and THREAD
  without UID (so also their ESEARCH / ESORT forms, whose results would be message numbers), a
  sequence-set search key in UID SEARCH, UID SORT and UID THREAD (`*` included), and QRESYNC's
  seq-match-data in SELECT / EXAMINE (§3, RFC 7162 §3.2.5.2: message numbers, so not allowed);
* responses: `Selected.fetch_head` starts every message response `* uid UIDFETCH (` instead of
  `* n FETCH (` (§3.3: `uidfetch-resp = uniqueid SP "UIDFETCH" SP msg-att`), for UID FETCH, UID STORE,
  unsolicited flag changes (IDLE, NOOP, any command), QRESYNC's SELECT and NOTIFY's MessageNew fetches; the UID
  data item is left out unless the client asked for it by name (the UID is the response's number). Removals are
  `VANISHED uids` whether or not QRESYNC was enabled (`Selected.expunged`, the one place that announces
  them), and SELECT leaves out `OK [UNSEEN n]` (RFC 3501 §7.1: a message number). EXISTS and RECENT stay:
  they are counts, not message numbers.

The search key `$` (RFC 5182) is allowed: it names the messages of the saved result, which a UID SEARCH saved as
UIDs (state.py invariant 4), not numbers.

SELECT still lists the mailbox's UIDs (`Selected.uids`) when UIDONLY is on: the list is the client's view
(state.py invariant 1), which decides what a VANISHED without (EARLIER) may name (the client lowers its message
count for each UID, RFC 7162 §3.2.10), what EXISTS counts, and that no UIDFETCH shows a message before its
EXISTS. Keeping a count instead would need a store lookup per announced message; the listing is one query at
4 bytes a message.

Invariants
1. Once `Session.uidonly` is set no response of the session carries a message sequence number, and no command
   that takes one reaches its handler.
2. `refusal` raises nothing and looks at each search key once (the parser bounds their depth, parser invariant 2).
"""

from __future__ import annotations

from . import parser as P

CODE = "UIDREQUIRED"  # RFC 9586 §3: the response code of the BAD
SEQUENCE_COMMANDS = frozenset({"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "SORT", "THREAD"})


def uses_numbers(key: P.Key) -> bool:
    """Whether a search program has a sequence-set key (message numbers, `*` included); `$` does not count."""
    todo = [key]
    while todo:
        k = todo.pop()
        if k.op == "SEQ":
            seqset = k.args[0]
            assert isinstance(seqset, P.SeqSet)
            if not seqset.saved:
                return True
        elif k.op in ("AND", "OR", "NOT"):
            todo.extend(a for a in k.args if isinstance(a, P.Key))
    return False


def refusal(cmd: P.Command) -> str | None:
    """Why `cmd` may not be run once UIDONLY is enabled (the text of its `BAD [UIDREQUIRED]`), or None."""
    if cmd.name in SEQUENCE_COMMANDS and not cmd.uid:
        return f"{cmd.name} takes message numbers; use UID {cmd.name} (UIDONLY is enabled)"
    a = cmd.args
    if isinstance(a, (P.SearchArgs, P.SortArgs, P.ThreadArgs)) and uses_numbers(a.key):
        return "Message numbers in a search program; use the UID search key (UIDONLY is enabled)"
    if isinstance(a, P.SelectArgs) and a.qresync is not None and a.qresync.seq_match is not None:
        return "QRESYNC seq-match-data holds message numbers (UIDONLY is enabled)"
    return None
