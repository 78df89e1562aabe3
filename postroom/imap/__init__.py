"""The IMAP4rev1 + IMAP4rev2 server (RFC 3501, RFC 9051) with the extensions listed in `session.base_capabilities`.

Layers, from the wire up:

* `framer` (sans-I/O): bytes -> commands, literals and their `+` continuations, line and size limits;
* `syntax` and `parser` (sans-I/O): one command -> typed arguments (RFC 9051 §9 formal syntax);
* `encoder` (sans-I/O): values -> response bytes (strings, mailbox names, flags, sequence sets, dates);
* `state`: the session states (RFC 9051 §3) and the Selected state (sequence numbers, \\Recent, pending changes,
  `$`), no I/O;
* `commands`: the command table, each wire name ("FETCH", "UID FETCH") -> the states it is valid in and its
  handler (docs/ARCHITECTURE.md "IMAP commands" adds its parser and tests);
* `session`: the asyncio state machine over one `net.Connection`, the dispatch through that table and the one
  place that turns exceptions into BAD / NO;
* `errors`: what handlers raise (`Bad`, `No`, `Silent`, `Bye`) and return (`Result`); `arguments`: command
  arguments in the session's terms (sequence sets to UIDs, flag names, mailbox names to and from the store's),
  shared by the command modules;
* one module per command family: `auth` (CAPABILITY NOOP LOGOUT STARTTLS LOGIN AUTHENTICATE ENABLE ID
  UNAUTHENTICATE),
  `mailboxes` (SELECT EXAMINE CREATE with CREATE-SPECIAL-USE, DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB
  NAMESPACE STATUS APPEND with MULTIAPPEND), `fetch` (FETCH and its planner; SAVEDATE, RFC 8514), `preview`
  (FETCH PREVIEW, RFC 8970), `search` (SEARCH, ESEARCH, SEARCHRES, WITHIN; narrowed by the store's full-text
  index), `messages` (STORE COPY MOVE EXPUNGE UID EXPUNGE CLOSE UNSELECT CHECK), `idle` (IDLE), `sort` (SORT, UID SORT,
  ESORT), `thread` (THREAD, UID THREAD), `compress`
  (COMPRESS, RFC 4978: the deflate layer itself is the connection's, `net/connection.py`), `notify` (NOTIFY,
  RFC 5465: which changes of which mailboxes are told, and when), `acl` (SETACL DELETEACL GETACL LISTRIGHTS
  MYRIGHTS, RFC 4314; the "Other Users" namespace and the rights every command checks on another user's
  mailbox), `metadata` (GETMETADATA SETMETADATA, RFC 5464), `quota` (GETQUOTA GETQUOTAROOT SETQUOTA, RFC 9208;
  `NO [OVERQUOTA]` for a write over a limit);
* `uidonly` (RFC 9586): which commands a session that enabled UIDONLY may no longer send (`BAD [UIDREQUIRED]`);
  its UIDFETCH and VANISHED responses are written by `state.Selected`;
* shared by families: `objectid` (OBJECTID's MAILBOXID / EMAILID / THREADID, used by `mailboxes`, `fetch` and
  `search`; the lazy fill of sort keys), `results` (ESEARCH items of SEARCH and SORT: ordered sets, PARTIAL).

CONDSTORE and QRESYNC (RFC 7162) are not a family of their own: they modify SELECT/EXAMINE (`mailboxes`), FETCH
(`fetch`), STORE and the expunging commands (`messages`), SEARCH (`search`), STATUS and ENABLE; what a session
has enabled lives in `session.Session` and `state.Selected`, and every EXPUNGE / VANISHED is written by
`Selected.expunged`.

`session.imap_handler` is what `app.HANDLER_FACTORIES` runs for the "imap" and "imaps" listeners.
"""
