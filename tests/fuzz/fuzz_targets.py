"""Fuzz targets: the sans-I/O protocol cores and the MIME model fed hostile bytes.

Theory of operation
-------------------
Each target takes the input as a list of chunks (the same bytes cut where a network might cut them) and drives
one core the way its session does, answering every event it raises with a permissive but real answer. A target
returns normally for every input; anything else is a finding. Besides "does not raise", each target checks the
core's own promises, so a fuzzer finds wrong behaviour and not only crashes:

* `smtp`: every byte written is a well-formed reply line (RFC 5321 §4.2: three digits, SP or "-", text, CRLF);
  the buffer never holds more than a line's limit plus the chunk just fed outside DATA and BDAT, nor more than
  the message limit plus one DATA piece inside them (invariant 2 of `smtp/protocol.py`).
* `pop3`: every reply line starts with `+OK`, `-ERR` or `+ ` (RFC 1939 §3, RFC 5034 §4), or is message data;
  the buffer stays within one line's limit plus the chunk (the module's line-reading rule).
* `imap`: the framer never raises and stays within its limits (framer invariants 1-2); every framed command
  either parses or raises `ParseError` (answered BAD), never anything else.
* `inbound`: the SPF record parser raises only PermError; DKIM tag lists, DMARC records and the search for our
  Authentication-Results fields never raise, and the spans found lie inside the input, in order.
* `mime`: `compute_meta` never raises (meta invariant 1); the serialised meta reads back equal (invariant 2);
  every part-table row names slices inside the message; section and BINARY reads of every part give bytes or
  the documented `UnknownCTE`; `compute_meta_staged` over the first chunk as prefix and the rest in a file, read
  through a small window, gives the same meta (meta invariant 6).

`SEEDS` holds valid sessions and messages that mutation starts from; `mutate` makes one hostile variant of a
seed (byte flips, cuts, repeats, splices and the tokens that have broken mail software before: bare CR, NUL,
8-bit bytes, huge literal and size announcements, deep nesting). `split` cuts an input the three ways the unit
tests use: whole, byte by byte, and at random points.

Used by `tests/fuzz/test_fuzz_targets.py` (hypothesis, a bounded number of examples in the suite) and by
`tests/fuzz/fuzz.py` (`./run fuzz`: each target for a chosen time, findings saved to files).
"""

from __future__ import annotations

import atexit
import base64
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from postroom.config import LimitsConfig
from postroom.imap import parser as IP
from postroom.inbound import authres, dmarc, spf
from postroom.inbound import dkim as dkim_in
from postroom.mime.imap import Section, UnknownCTE
from postroom.mime.meta import MessageMeta, compute_meta, compute_meta_staged
from postroom.mime.staged import StagedMessage
from postroom.pop3 import protocol as P3
from postroom.smtp import data as SD
from postroom.smtp import events as SE
from postroom.smtp import protocol as SP
from postroom.smtp import replies as R
from postroom.smtp import states as SS

Target = Callable[[list[bytes]], None]

# Small limits so the fuzzer reaches every limit path quickly.
SMTP_LINE = 512
SMTP_MAX_SIZE = 4096
POP3_LINE = 256
IMAP_LINE = 256
IMAP_COMMAND = 1024
IMAP_LITERAL = 2048
MIME_LIMITS = LimitsConfig(mime_depth=8, mime_parts=64)

_REPLY_LINE = re.compile(rb"\A[2-5][0-9][0-9][ -][^\r\n]*\r\n\Z")


class Finding(AssertionError):
    """A target saw the core break one of its promises (a crash is reported as the exception itself)."""


# ---------------------------------------------------------------------------------------------------------
# SMTP


def _smtp_answer(core: SP.ServerCore, ev: object, turn: int) -> None:
    """A session that accepts most things and refuses some, so both paths of every event are walked."""
    refuse = turn % 7 == 3
    if isinstance(ev, SE.MailFrom):
        core.send(R.R550_NO_SUCH_USER) if refuse else core.accept_mail()
    elif isinstance(ev, SE.RcptTo):
        core.send(R.R550_NO_SUCH_USER) if refuse else core.accept_rcpt(ev.recipient)
    elif isinstance(ev, SE.Message):
        core.message_done(R.R451_LOCAL_ERROR if refuse else R.queued(f"q{turn}"))
    elif isinstance(ev, SE.AuthStart):
        if ev.initial is None:
            core.auth_challenge(b"challenge")
        else:
            core.auth_done(R.R235_AUTH_OK if not refuse else R.R535_AUTH_FAILED, "u@example.test")
    elif isinstance(ev, SE.AuthResponse):
        core.auth_done(R.R535_AUTH_FAILED if refuse else R.R235_AUTH_OK, "u@example.test")
    elif isinstance(ev, (SE.Verify, SE.Expand)):
        core.send(R.R252_CANNOT_VRFY)
    elif isinstance(ev, SE.StartTLS):
        core.send(R.R220_READY_TLS)
        core.tls_started()


def smtp(chunks: list[bytes]) -> None:
    """Drive `smtp.protocol.ServerCore` over the chunks; raise on a crash or a broken promise."""
    core = SP.ServerCore("mx.example.test", max_size=SMTP_MAX_SIZE, max_recipients=5, line_length=SMTP_LINE,
                         max_errors=1000)
    core.starttls_available = True
    core.auth_mechanisms = ("PLAIN", "LOGIN")
    core.greet()
    out = bytearray(core.data_to_send())
    turn = 0
    for chunk in chunks:
        core.receive_data(chunk)
        while True:
            ev = core.next_event()
            if ev is SP.NEED_DATA or isinstance(ev, SE.Closed):
                break
            turn += 1
            _smtp_answer(core, ev, turn)
        if core.mode in (SS.Mode.COMMAND, SS.Mode.SASL) and core.pending_input > 12288 + len(chunk):
            raise Finding(f"SMTP core buffers {core.pending_input} bytes of a command line")
        # smtp/protocol.py invariant 2: unread DATA is held up to about DATA_PIECE plus the chunk just fed, and a
        # body up to max_size (no spill_at here); data past max_size is counted, never kept.
        bound = SMTP_MAX_SIZE + SD.DATA_PIECE + SMTP_LINE + len(chunk)
        if core.pending_input > bound or core.held_bytes > bound:
            raise Finding(f"SMTP core holds {core.pending_input} / {core.held_bytes} bytes, over {bound}")
        out += core.data_to_send()
        if core.closed:
            break
    for line in bytes(out).split(b"\r\n")[:-1]:
        if line.startswith(b"334 "):
            continue  # RFC 4954 §4: a SASL challenge carries base64, not reply text
        if not _REPLY_LINE.match(line + b"\r\n"):
            raise Finding(f"malformed SMTP reply line {line[:80]!r}")
    if out and not out.endswith(b"\r\n"):
        raise Finding("SMTP output does not end with CRLF")


# ---------------------------------------------------------------------------------------------------------
# POP3

_POP3_MESSAGES = [
    b"From: a@example.test\r\nSubject: one\r\n\r\nhello\r\n.leading dot\r\n",
    b"Subject: two\n\nbare LF body\n",
    b"",
]


def _pop3_entries() -> list[P3.Entry]:
    return [P3.Entry(uid=i + 1, size=len(m), blob_id=f"b{i}", uidl=P3.make_uidl(7, i + 1))
            for i, m in enumerate(_POP3_MESSAGES)]


def pop3(chunks: list[bytes]) -> None:
    """Drive `pop3.protocol.POP3Core` over the chunks; raise on a crash or a broken promise. Twice: fed as is,
    and with each chunk offered to `quick_retr` first, as the session does; the replies must be the same
    (protocol.py invariant 7)."""
    replies = _pop3_replies(chunks, quick=False)
    if _pop3_replies(chunks, quick=True) != replies:
        raise Finding("POP3 quick_retr answers otherwise than the usual path")
    for reply in replies:
        _check_pop3(reply)


def _pop3_replies(chunks: list[bytes], quick: bool) -> list[bytes]:
    core = P3.POP3Core(P3.Options(user_without_tls=True, line_limit=POP3_LINE, max_errors=1000))
    replies: list[bytes] = [core.greeting()]
    done = False
    for chunk in chunks:
        retr = core.quick_retr(chunk) if quick else None
        if retr is None:
            core.receive_data(chunk)
        while not done:
            ev: object = retr if retr is not None else core.next_event()
            retr = None
            if ev is P3.NEED_DATA:
                break
            if isinstance(ev, P3.Send):
                replies.append(b"".join(ev.chunks))
                done = ev.close
            elif isinstance(ev, P3.CheckPassword):
                replies.append(core.login_ok(ev.username, _pop3_entries()) if ev.password == "right"
                               else core.login_failed())
            elif isinstance(ev, P3.StartSasl):
                replies.append(core.sasl_challenge(b""))
            elif isinstance(ev, P3.SaslResponse):
                replies.append(core.login_ok("u@example.test", _pop3_entries()) if ev.data.endswith(b"right")
                               else core.login_failed())
            elif isinstance(ev, P3.StartTls):
                replies.append(core.tls_go_ahead())
                core.tls_started()
            elif isinstance(ev, P3.Retrieve):
                raw = _POP3_MESSAGES[ev.entry.uid - 1]
                replies.append(b"".join(core.message_reply(ev.number, raw, ev.lines)))
            elif isinstance(ev, P3.Update):
                replies.append(core.update_done(len(ev.uids)))
                done = True
        if core.buffered > POP3_LINE + len(chunk):
            raise Finding(f"POP3 core buffers {core.buffered} bytes")
        if done:
            break
    return replies


def _check_pop3(reply: bytes) -> None:
    """One reply: a status line (RFC 1939 §3) or a SASL challenge (RFC 5034 §4); a multi-line one ends in "."."""
    if not reply:
        return  # a Send with no bytes: the core closing after its last reply
    if not reply.startswith((b"+OK", b"-ERR", b"+ ")) or not reply.endswith(b"\r\n"):
        raise Finding(f"POP3 reply that is not a status line: {reply[:80]!r}")
    if reply.count(b"\r\n") > 1 and not reply.endswith(b"\r\n.\r\n"):
        raise Finding(f"multi-line POP3 reply not ended by a lone dot: {reply[-40:]!r}")
    if reply.startswith(b"-ERR") and reply.count(b"\r\n") > 1:
        raise Finding(f"-ERR reply over several lines: {reply[:80]!r}")


# ---------------------------------------------------------------------------------------------------------
# IMAP


def imap(chunks: list[bytes]) -> None:
    """Frame the chunks with `imap.framer.Framer` and parse every command; raise on a crash or a broken promise."""
    f = IP.Framer(max_line=IMAP_LINE, max_command=IMAP_COMMAND)
    for chunk in chunks:
        f.feed(chunk)
        for _ in range(10_000):
            ev = f.next_event()
            if ev is IP.NEED_DATA:
                break
            if isinstance(ev, IP.LiteralRequest):
                f.accept_literal() if ev.size <= IMAP_LITERAL else f.reject_literal()
            elif isinstance(ev, IP.RawCommand):
                try:
                    IP.parse_command(ev.data)
                except IP.ParseError:
                    pass
        else:
            raise Finding("IMAP framer produced 10,000 events from one chunk")
        if f.buffered > IMAP_LINE + IMAP_COMMAND + IMAP_LITERAL + len(chunk):
            raise Finding(f"IMAP framer buffers {f.buffered} bytes")


# ---------------------------------------------------------------------------------------------------------
# MIME


_STAGING: list[Path] = []


def _staging_file() -> Path:
    """One file of this process's own temporary folder (removed at exit), rewritten by every `mime` input."""
    if not _STAGING:
        folder = tempfile.mkdtemp(prefix="fuzz-mime-")
        atexit.register(shutil.rmtree, folder, True)
        _STAGING.append(Path(folder) / "staged")
    return _STAGING[0]


def mime(chunks: list[bytes]) -> None:
    """Compute the metadata of the joined bytes and read every part back; raise on a crash or broken promise."""
    raw = b"".join(chunks)
    meta = compute_meta(raw, MIME_LIMITS)
    if MessageMeta.from_bytes(meta.to_bytes()) != meta:
        raise Finding("meta does not survive to_bytes/from_bytes")
    staged = _staging_file()
    staged.write_bytes(raw[len(chunks[0]) if chunks else 0:])
    with StagedMessage(chunks[0] if chunks else b"", staged, 16 + len(chunks) % 61) as view:
        if compute_meta_staged(view, MIME_LIMITS) != meta:
            raise Finding("compute_meta_staged differs from compute_meta")
    for row in meta.parts:
        if not (0 <= row.header_start <= row.body_start <= row.end <= len(raw)):
            raise Finding(f"part {row.section!r} names slices outside the message")
        section = Section(tuple(int(n) for n in row.section.split(".")) if row.section else ())
        meta.section(raw, section)
        try:
            meta.binary(raw, section.part)
        except UnknownCTE:
            pass


def inbound(chunks: list[bytes]) -> None:
    """The inbound-trust parsers on the joined bytes: an SPF record parses or is PermError (never anything
    else); DKIM-Signature tag lists, DMARC records and our Authentication-Results spans never raise, and the
    spans lie inside the header, in order."""
    raw = b"".join(chunks)
    text = raw.decode("latin-1")
    try:
        spf.parse_record("v=spf1 " + text.replace("\r", " ").replace("\n", " "))
    except spf.PermError:
        pass
    dkim_in.signature_tags(raw)
    dmarc.parse_record(text)
    last = 0
    for start, stop in authres.own_fields(raw, "mx.example.test"):
        if not (last <= start < stop <= len(raw)):
            raise Finding(f"Authentication-Results span {start}-{stop} out of order or outside the input")
        last = stop
    authres.header("mx.example.test", spf=spf.SpfResult("fail", text[:300], reason=text[:300]),
                   mail_from=text[:300]).decode("ascii")


TARGETS: dict[str, Target] = {"smtp": smtp, "pop3": pop3, "imap": imap, "mime": mime, "inbound": inbound}

# ---------------------------------------------------------------------------------------------------------
# Seeds and mutation

_MSG = (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"Date: Mon, 1 Jan 2024 23:30:00 -0800\r\nMessage-ID: <1@example.test>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n--b1\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"hello  \r\nbar= \r\nbaz=C3=A9\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>hi <a href=x>x</a>\r\n"
        b"--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--b1\r\n"
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename*=iso-8859-1''caf%E9.pdf\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n")

SEEDS: dict[str, list[bytes]] = {
    "smtp": [
        b"EHLO c.example\r\nMAIL FROM:<a@example.test> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<b@example.test> "
        b"NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.test\r\nDATA\r\n" + _MSG + b"..dot\r\n.\r\nQUIT\r\n",
        b"EHLO c\r\nAUTH PLAIN " + base64.b64encode(b"\x00u\x00right") + b"\r\nMAIL FROM:<>\r\n"
        b"RCPT TO:<\"john doe\"@example.test>\r\nBDAT 10\r\n0123456789BDAT 3 LAST\r\nabcRSET\r\n",
        b"HELO c\r\nAUTH LOGIN\r\ndQ==\r\n*\r\nVRFY postmaster\r\nEXPN list\r\nSTARTTLS\r\nNOOP\r\nHELP\r\n",
    ],
    "pop3": [
        b"CAPA\r\nUSER u@example.test\r\nPASS right\r\nSTAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nRETR 1\r\nTOP 2 0\r\n"
        b"DELE 1\r\nRSET\r\nNOOP\r\nQUIT\r\n",
        b"STLS\r\nAUTH PLAIN\r\n" + base64.b64encode(b"\x00u\x00right") + b"\r\nRETR 2\r\nDELE 3\r\nQUIT\r\n",
        b"AUTH LOGIN\r\n*\r\nUSER x\r\nPASS wrong\r\nAPOP x y\r\n",
    ],
    "imap": [
        b"a1 LOGIN u p\r\na2 SELECT INBOX\r\na3 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM)] BINARY[1]<0.10>)\r\n"
        b'a4 UID SEARCH OR FROM "x" NOT TEXT {3}\r\nabc SENTON 1-Jan-2024\r\na5 STORE 1 +FLAGS ($newkw)\r\n',
        b'b1 APPEND INBOX (\\Seen) "3-Feb-2025 10:00:00 +0000" {5+}\r\nhello\r\nb2 LIST (RECURSIVEMATCH '
        b'SUBSCRIBED) "" "*" RETURN (CHILDREN STATUS (MESSAGES))\r\nb3 ID ("name" "x")\r\nb4 IDLE\r\nDONE\r\n',
        b'c1 CREATE "\xff"\r\nc2 RENAME a/b "&AOk-t&AOk-"\r\nc3 APPEND x ~{3+}\r\n\x00\x01\x02\r\nc4 LOGOUT\r\n',
        b"d1 ENABLE QRESYNC\r\nd2 SELECT INBOX (QRESYNC (67890007 9006011519 41:211,214:541 (1:3,9 2,4:6)))\r\n"
        b"d3 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\nd4 STORE 7,5 (UNCHANGEDSINCE 3) +FLAGS.SILENT "
        b'(\\Deleted)\r\nd5 SEARCH MODSEQ "/flags/\\\\draft" all 620162338\r\nd6 STATUS x (HIGHESTMODSEQ)\r\n',
    ],
    "inbound": [
        b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=sel;\r\n\th=from:to; bh=abc=; b=def=\r\n"
        b"Authentication-Results: (c) mx.example.test; dkim=pass\r\n\r\nbody\r\n",
        b"ip4:192.0.2.0/24 a:%{d2}.example mx/24//64 include:_spf.%{o} exists:%{ir}.%{v}.%{d} redirect=x.test "
        b"exp=%{l1r-}.x ~all",
        b"v=DMARC1; p=reject; sp=none; pct=50; adkim=s; rua=mailto:x@y.test",
    ],
    "mime": [
        _MSG,
        b"Content-Type: text/html\r\n\r\n" + b"<a " * 200,
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: multipart/mixed; boundary=y"
        b"\r\n\r\n--y\r\n\r\nA\r\n--y--\r\n--x--\r\n",
    ],
}

TOKENS = [b"\r", b"\n", b"\r\n", b"\x00", b"\xff", b"\xc3", b".\r\n", b"\r\n.\r\n", b"\r.\r\n", b"{99999999}",
          b"{5}\r\n", b"~{1+}\r\n", b"(", b")" * 50, b"(" * 200, b"--", b"=\r\n", b"=XX", b"\"", b"\\", b"*",
          b"BDAT 999999999\r\n", b"DATA\r\n", b"%", b"=?utf-8?b?", b"?=", b"boundary=", b";filename*0*=",
          b"%E9", b"\t", b" " * 300, b"A" * 1000, b"<", b">", b"@", b"1:*", b"4294967295", b"-1"]


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    """One hostile variant of `data`: 1-8 random edits drawn from flips, cuts, repeats, splices and TOKENS."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 2 and buf:
            del buf[pos:pos + rng.randint(1, 64)]
        elif op == 3 and buf:
            piece = bytes(buf[pos:pos + rng.randint(1, 128)])
            buf[pos:pos] = piece * rng.randint(2, 40)
        elif op == 4:
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            buf[pos:pos] = other[start:start + rng.randint(1, 256)]
        elif op == 5:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            buf = buf[:pos]
    return bytes(buf[:65536])


def split(rng: random.Random, data: bytes) -> list[bytes]:
    """`data` whole, byte by byte, or cut at random points (one of the three, chosen by `rng`)."""
    way = rng.randrange(3)
    if way == 0 or not data:
        return [data]
    if way == 1:
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12)))) if len(data) > 1 else []
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]
