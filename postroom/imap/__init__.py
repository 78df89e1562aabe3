"""The IMAP4rev1 + IMAP4rev2 server (RFC 3501, RFC 9051) with the extensions listed in `session.base_capabilities`.

Layers, from the wire up:

* `framer` (sans-I/O): bytes -> commands, literals and their `+` continuations, line and size limits;
* `syntax` and `parser` (sans-I/O): one command -> typed arguments (RFC 9051 §9 formal syntax);
* `encoder` (sans-I/O): values -> response bytes (strings, mailbox names, flags, sequence sets, dates);
* `state`: the Selected state (sequence numbers, \\Recent, pending changes, `$`), no I/O;
* `session`: the asyncio state machine over one `net.Connection`, the `{verb: states}` dispatch table and the
  one place that turns exceptions into BAD / NO;
* one module per command family: `auth` (CAPABILITY NOOP LOGOUT STARTTLS LOGIN AUTHENTICATE ENABLE ID),
  `mailboxes` (SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB NAMESPACE STATUS APPEND),
  `fetch` (FETCH and its planner), `search` (SEARCH, ESEARCH, SEARCHRES), `messages` (STORE COPY MOVE
  EXPUNGE UID EXPUNGE CLOSE UNSELECT CHECK), `idle` (IDLE), `sort` (SORT, UID SORT, ESORT), `thread` (THREAD,
  UID THREAD);
* shared by families: `objectid` (OBJECTID's MAILBOXID / EMAILID / THREADID, used by `mailboxes`, `fetch` and
  `search`; the lazy fill of sort keys), `results` (ESEARCH items of SEARCH and SORT: ordered sets, PARTIAL).

`session.imap_handler` is what `app.HANDLER_FACTORIES` runs for the "imap" and "imaps" listeners.
"""
