"""The IMAP4rev1 + IMAP4rev2 server (RFC 3501, RFC 9051) with the extensions listed in `session.base_capabilities`.

Layers, from the wire up:

* `framer` (sans-I/O): bytes -> commands, literals and their `+` continuations, line and size limits;
* `syntax` and `parser` (sans-I/O): one command -> typed arguments (RFC 9051 §9 formal syntax);
* `encoder` (sans-I/O): values -> response bytes (strings, mailbox names, flags, sequence sets, dates);
* `state`: the Selected state (sequence numbers, \\Recent, pending changes, `$`), no I/O;
* `session`: the asyncio state machine over one `net.Connection`, the `{verb: states}` dispatch table and the
  one place that turns exceptions into BAD / NO;
* one module per command family: `auth` (CAPABILITY NOOP LOGOUT STARTTLS LOGIN AUTHENTICATE ENABLE ID),
  `mailboxes` (SELECT EXAMINE CREATE with CREATE-SPECIAL-USE, DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB
  NAMESPACE STATUS APPEND with MULTIAPPEND), `fetch` (FETCH and its planner; SAVEDATE, RFC 8514), `preview`
  (FETCH PREVIEW, RFC 8970), `search` (SEARCH, ESEARCH, SEARCHRES), `messages` (STORE COPY MOVE EXPUNGE
  UID EXPUNGE CLOSE UNSELECT CHECK), `idle` (IDLE), `metadata` (GETMETADATA SETMETADATA, RFC 5464).

`session.imap_handler` is what `app.HANDLER_FACTORIES` runs for the "imap" and "imaps" listeners.
"""
