"""COMPRESS (RFC 4978, COMPRESS=DEFLATE): deflate both directions of the connection from the next byte on.

Theory of operation
-------------------
The compression itself is a layer of the connection driver (`net/connection.py`, "Compression"), which the
session does not see: after the tagged OK of COMPRESS, every byte the session reads has been inflated and
every burst it writes is deflated and sync-flushed. Over TLS (imaps, or after STARTTLS) the layer sits inside
TLS: data is compressed, then encrypted (RFC 4978 §4). The handler only checks that the command may run,
writes its OK uncompressed, and switches the layer on.

Invariants
1. The tagged OK is the last uncompressed byte the server sends; the client's bytes after its COMPRESS line
   are compressed (RFC 4978 §3), so plaintext pipelined after the command cannot be told apart from them and is
   refused with BAD, before anything is switched (as STARTTLS refuses it, CVE-2011-0411).
2. A second COMPRESS, or COMPRESS while TLS itself compresses, is `NO [COMPRESSIONACTIVE]` (§3); an unknown
   mechanism is BAD (the formal syntax has `DEFLATE` only).
3. Nothing else changes: the session's state, its limits (so a decompression bomb meets the command-size
   limit, never unbounded memory) and UNAUTHENTICATE (RFC 8437: compression stays on).
"""

from __future__ import annotations

from . import parser as P
from .errors import Bad, No, Result, Silent
from .session import Session


async def compress(s: Session, cmd: P.Command) -> Result:
    assert isinstance(cmd.args, P.Names)
    if cmd.args.items != ("DEFLATE",):
        raise Bad("Unknown compression mechanism")  # invariant 2: RFC 4978 §3 BAD for unknown mechanisms
    if s.conn.compressed or s.conn.tls_compression is not None:
        raise No("Compression is already active", "COMPRESSIONACTIVE")  # RFC 4978 §3
    if s.framer.buffered or s.conn.pending:  # invariant 1
        raise Bad("Data pipelined after COMPRESS")
    s.write(b"%s OK DEFLATE active\r\n" % cmd.tag.encode())
    await s.flush()  # the OK goes out uncompressed (invariant 1)
    s.conn.start_compression()
    s.conn.log["compress"] = "deflate"
    raise Silent()
