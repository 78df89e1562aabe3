"""The message model: MIME parsed once, at delivery, from the exact raw bytes.

Modules (each opens with its theory of operation and invariants):

    structure   the byte-offset scan: every part's header start, body start, end, lines (RFC 2045/2046)
    headers     header fields and MIME parameters (RFC 2045 §5.1, RFC 2231) read without re-serialising
    address     RFC 5322 address lists as IMAP ENVELOPE needs them (groups, routes, NIL rules)
    imap        ENVELOPE, BODY, BODYSTRUCTURE wire bytes; BODY[section] and BINARY (RFC 9051, RFC 3516)
    cte         Content-Transfer-Encoding decoding (RFC 2045 §6.7, §6.8): the one decoder BINARY and search use
    dates       the Date: field as SEARCH SENT* (day as written) and SORT DATE (UTC instant) need it
    text        search text: RFC 2047 headers and decoded text bodies, HTML reduced to text
    meta        compute_meta(): all of the above once, as a compact blob the store keeps per message
    pool        where compute_meta runs: on the event loop up to 8 KiB, else in worker processes with a time limit
    compose     building messages (text, HTML alternative, attachments, inline images) over stdlib `email`

Typical use: at delivery `await pool.meta_bytes(raw, config.limits)` goes into `AppendRequest.meta`; FETCH
reads it back with `MessageMeta.from_bytes()` and answers from it and the raw bytes.
"""
