"""The sans-I/O SMTP core fed bytes: every command in every state, pipelining split at every byte, DATA, BDAT
with binary data, SASL framing, parameters, limits."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable

import pytest

from postroom.smtp import replies as R
from postroom.smtp.data import DATA_PIECE
from postroom.smtp.events import (
    AuthAborted,
    AuthResponse,
    AuthStart,
    BodyData,
    BodyDiscarded,
    Closed,
    Expand,
    MailFrom,
    Message,
    RcptTo,
    StartTLS,
    Verify,
)
from postroom.smtp.protocol import NEED_DATA, ServerCore
from postroom.smtp.states import Mode, State

Answer = Callable[[ServerCore, object], None]


def default_answer(core: ServerCore, ev: object) -> None:
    """A permissive session: accept every sender and recipient, 250 every message, PLAIN logs in."""
    if isinstance(ev, MailFrom):
        core.accept_mail()
    elif isinstance(ev, RcptTo):
        core.accept_rcpt(ev.recipient)
    elif isinstance(ev, Message):
        core.message_done(R.queued(f"q{core.messages + 1}"))
    elif isinstance(ev, AuthStart):
        if ev.initial is None:
            core.auth_challenge(b"")
        else:
            core.auth_done(R.R235_AUTH_OK, "u@example.org")
    elif isinstance(ev, AuthResponse):
        core.auth_done(R.R235_AUTH_OK, "u@example.org")
    elif isinstance(ev, (Verify, Expand)):
        core.send(R.R252_CANNOT_VRFY)
    elif isinstance(ev, StartTLS):
        core.send(R.R220_READY_TLS)
        core.tls_started()


def make(max_size: int = 10_000, max_recipients: int = 5, line_length: int = 1000, max_errors: int = 100,
         starttls: bool = True, auth: tuple[str, ...] = ("PLAIN", "LOGIN")) -> ServerCore:
    core = ServerCore("mx.test", max_size=max_size, max_recipients=max_recipients, line_length=line_length,
                      max_errors=max_errors)
    core.starttls_available = starttls
    core.auth_mechanisms = auth
    core.greet()
    core.data_to_send()
    return core


def drive(core: ServerCore, chunks: list[bytes], answer: Answer = default_answer) -> tuple[bytes, list[object]]:
    out = bytearray()
    events: list[object] = []
    for chunk in chunks:
        core.receive_data(chunk)
        while True:
            ev = core.next_event()
            if ev is NEED_DATA:
                break
            events.append(ev)
            if isinstance(ev, Closed):
                break
            answer(core, ev)
        out += core.data_to_send()
        if core.closed:
            break
    return bytes(out), events


def codes(out: bytes) -> list[str]:
    """The final line's code of each reply, e.g. ['250', '354', '250']."""
    return [line[:3].decode() for line in out.split(b"\r\n") if len(line) >= 4 and line[3:4] == b" "]


def session(data: bytes, **kw: object) -> tuple[bytes, list[object]]:
    return drive(make(**kw), [data])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Every command in every state


STATE_PREFIX = {
    "init": b"",
    "helo": b"HELO c.test\r\n",
    "ehlo": b"EHLO c.test\r\n",
    "mail": b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n",
    "rcpt": b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\n",
}
COMMANDS = {
    "HELO": b"HELO x.test\r\n",
    "EHLO": b"EHLO x.test\r\n",
    "MAIL": b"MAIL FROM:<s@x.test>\r\n",
    "RCPT": b"RCPT TO:<t@mx.test>\r\n",
    "DATA": b"DATA\r\nhello\r\n.\r\n",
    "BDAT": b"BDAT 5 LAST\r\nhello",
    "RSET": b"RSET\r\n",
    "NOOP": b"NOOP\r\n",
    "QUIT": b"QUIT\r\n",
    "VRFY": b"VRFY someone\r\n",
    "EXPN": b"EXPN list\r\n",
    "HELP": b"HELP\r\n",
    "STARTTLS": b"STARTTLS\r\n",
    "AUTH": b"AUTH PLAIN AHVAcHc=\r\n",
    "BOGUS": b"BOGUS\r\n",
}
# The reply codes each command gets in each state (DATA gets 354 then 250 when allowed).
EXPECTED = {
    "HELO": dict(init=["250"], helo=["250"], ehlo=["250"], mail=["250"], rcpt=["250"]),
    "EHLO": dict(init=["250"], helo=["250"], ehlo=["250"], mail=["250"], rcpt=["250"]),
    "MAIL": dict(init=["503"], helo=["250"], ehlo=["250"], mail=["503"], rcpt=["503"]),
    "RCPT": dict(init=["503"], helo=["503"], ehlo=["503"], mail=["250"], rcpt=["250"]),
    "DATA": dict(init=["503", "500", "500"], helo=["503", "500", "500"], ehlo=["503", "500", "500"],
                 mail=["554", "500", "500"], rcpt=["354", "250"]),
    "BDAT": dict(init=["503"], helo=["503"], ehlo=["503"], mail=["554"], rcpt=["250"]),
    "RSET": dict(init=["250"], helo=["250"], ehlo=["250"], mail=["250"], rcpt=["250"]),
    "NOOP": dict(init=["250"], helo=["250"], ehlo=["250"], mail=["250"], rcpt=["250"]),
    "QUIT": dict(init=["221"], helo=["221"], ehlo=["221"], mail=["221"], rcpt=["221"]),
    "VRFY": dict(init=["252"], helo=["252"], ehlo=["252"], mail=["252"], rcpt=["252"]),
    "EXPN": dict(init=["252"], helo=["252"], ehlo=["252"], mail=["252"], rcpt=["252"]),
    "HELP": dict(init=["214"], helo=["214"], ehlo=["214"], mail=["214"], rcpt=["214"]),
    "STARTTLS": dict(init=["503"], helo=["503"], ehlo=["220"], mail=["503"], rcpt=["503"]),
    "AUTH": dict(init=["503"], helo=["503"], ehlo=["235"], mail=["503"], rcpt=["503"]),
    "BOGUS": dict(init=["500"], helo=["500"], ehlo=["500"], mail=["500"], rcpt=["500"]),
}


@pytest.mark.parametrize("state", list(STATE_PREFIX))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_in_every_state(state: str, command: str) -> None:
    core = make()
    prefix_out, _ = drive(core, [STATE_PREFIX[state]])
    assert all(c in ("250",) for c in codes(prefix_out))
    out, _ = drive(core, [COMMANDS[command]])
    assert codes(out) == EXPECTED[command][state], out
    # Every reply carries an enhanced status code, except EHLO/HELO and 354 (replies.py invariant 1).
    for line in out.split(b"\r\n"):
        if line and command not in ("HELO", "EHLO") and not line.startswith(b"354"):
            assert line[4:5].isdigit() and line[5:6] == b".", line
    # A 503 names what is missing, never the command itself as the missing one (DATA or BDAT before MAIL were
    # once told "Need MAIL before RCPT").
    if command in ("DATA", "BDAT") and state in ("init", "helo", "ehlo"):
        assert b"503 5.5.1 Need MAIL command first" in out, out
    # The session goes on after any error (except QUIT).
    if command != "QUIT":
        more, _ = drive(core, [b"NOOP\r\n"])
        assert codes(more) == ["250"]


def test_ehlo_advertises_exactly_the_extensions() -> None:
    out, _ = session(b"EHLO c.test\r\n")
    lines = out.decode().split("\r\n")[:-1]
    assert lines[0] == "250-mx.test Hello c.test"
    keywords = [ln[4:] for ln in lines[1:]]
    assert keywords == ["PIPELINING", "SIZE 10000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING",
                        "DSN", "STARTTLS", "AUTH PLAIN LOGIN", "HELP"]
    out, _ = session(b"EHLO c.test\r\n", starttls=False, auth=())
    assert b"STARTTLS" not in out and b"AUTH" not in out


def test_helo_is_not_esmtp() -> None:
    out, _ = session(b"HELO c.test\r\nSTARTTLS\r\nAUTH PLAIN\r\n")
    assert codes(out) == ["250", "503", "503"]
    assert out.startswith(b"250 mx.test Hello c.test\r\n")


def test_helo_needs_domain() -> None:
    out, _ = session(b"EHLO\r\nHELO \r\nEHLO a b\r\n")
    assert codes(out) == ["501", "501", "501"]


# --------------------------------------------------------------------------------------------------------
# Pipelining: one batch, split at every byte, gives the same replies and events


PIPELINE = (b"EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=20 BODY=8BITMIME\r\nRCPT TO:<r@mx.test>\r\n"
            b"RCPT TO:<s@mx.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;s+40mx.test\r\nDATA\r\n"
            b"Subject: x\r\n\r\n..dot\r\n.\r\n"
            b"MAIL FROM:<>\r\nRCPT TO:<r@mx.test>\r\nBDAT 7\r\nab\r\n.\r\nBDAT 0 LAST\r\nNOOP\r\nQUIT\r\n")


def _normalise(events: list[object]) -> list[object]:
    return [e for e in events]


def test_pipelined_batch_whole() -> None:
    out, events = session(PIPELINE)
    assert codes(out) == ["250", "250", "250", "250", "354", "250", "250", "250", "250", "250", "250", "221"]
    msgs = [e for e in events if isinstance(e, Message)]
    assert msgs[0].raw == b"Subject: x\r\n\r\n.dot\r\n"
    assert msgs[0].params.size == 20 and msgs[0].params.body == "8BITMIME"
    assert msgs[0].recipients[1].notify == "SUCCESS,DELAY"
    assert msgs[0].recipients[1].orcpt == "rfc822;s+40mx.test"
    assert msgs[1].raw == b"ab\r\n.\r\n" and msgs[1].chunked and msgs[1].mail_from == ""
    assert isinstance(events[-1], Closed)


def test_pipelined_batch_split_at_every_byte() -> None:
    whole = session(PIPELINE)
    for i in range(1, len(PIPELINE)):
        got = drive(make(), [PIPELINE[:i], PIPELINE[i:]])
        assert got == whole, i


def test_pipelined_batch_byte_by_byte_and_random() -> None:
    whole = session(PIPELINE)
    assert drive(make(), [PIPELINE[i:i + 1] for i in range(len(PIPELINE))]) == whole
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(PIPELINE)), 5))
        parts = [PIPELINE[a:b] for a, b in zip([0] + cuts, cuts + [len(PIPELINE)])]
        assert drive(make(), parts) == whole


def test_next_event_refuses_while_an_event_awaits_its_answer() -> None:
    core = make()
    core.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n")
    assert isinstance(core.next_event(), MailFrom)
    with pytest.raises(RuntimeError):
        core.next_event()
    core.accept_mail()
    assert core.next_event() is NEED_DATA
    assert codes(core.data_to_send()) == ["250", "250", "250"]


# --------------------------------------------------------------------------------------------------------
# DATA


def _data(body: bytes, **kw: object) -> tuple[bytes, list[object]]:
    return session(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\nDATA\r\n" + body + b"NOOP\r\n", **kw)


@pytest.mark.parametrize("body,raw", [
    (b".\r\n", b""),
    (b"\r\n.\r\n", b"\r\n"),
    (b"a\r\n.\r\n", b"a\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"...x\r\n..\r\n.\r\n", b"..x\r\n.\r\n"),
    (b"a\r\n..b\r\n.c\r\n.\r\n", b"a\r\n.b\r\nc\r\n"),
    (b"\xff\xfe 8bit\r\n.\r\n", b"\xff\xfe 8bit\r\n"),
])
def test_data_unstuffing(body: bytes, raw: bytes) -> None:
    out, events = _data(body)
    assert codes(out)[-3:] == ["354", "250", "250"]
    assert [e.raw for e in events if isinstance(e, Message)] == [raw]


@pytest.mark.parametrize("body", [
    b"a\nb\r\n.\r\n",  # bare LF
    b"a\rb\r\n.\r\n",  # bare CR
    b"a\r\n.\n.\r\n\r\n.\r\n",  # "\n.\n": smuggling attempt; the data only ends at CRLF.CRLF
    b"a\r\n\n.\r\nMAIL FROM:<evil@x.test>\r\n.\r\n",
    b"a\n.\r\n\r\n.\r\n",
    b"a\r\n.\r.\r\n\r\n.\r\n",
])
def test_data_bare_cr_or_lf_refused(body: bytes) -> None:
    out, events = _data(body)
    assert codes(out)[-3:] == ["354", "550", "250"]
    assert b"550 5.6.0" in out
    assert not [e for e in events if isinstance(e, Message)]
    assert not [e for e in events if isinstance(e, MailFrom) and e.address == "evil@x.test"]


def test_data_oversize_is_552_and_session_goes_on() -> None:
    big = b"x" * 998 + b"\r\n"
    out, events = _data(big * 200 + b".\r\n", max_size=10_000)
    assert codes(out)[-3:] == ["354", "552", "250"]
    assert b"552 5.3.4" in out
    assert not [e for e in events if isinstance(e, Message)]


def test_data_oversize_memory_bounded_when_streamed() -> None:
    core = make(max_size=10_000)
    drive(core, [b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\nDATA\r\n"])
    for i in range(100):
        drive(core, [b"y" * 998 + b"\r\n"])
        # past max_size the body is dropped as it arrives: only the unread piece stays
        assert core.held_bytes < (DATA_PIECE + 1000 if i > 10 else 12_000 + DATA_PIECE)
    out, _ = drive(core, [b".\r\nNOOP\r\n"])
    assert codes(out) == ["552", "250"]


def test_data_exactly_max_size_accepted() -> None:
    body = b"z" * 98 + b"\r\n"
    out, events = _data(body * 100 + b".\r\n", max_size=10_000)
    assert [len(e.raw) for e in events if isinstance(e, Message)] == [10_000]


def test_size_parameter() -> None:
    out, _ = session(b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=10001\r\nMAIL FROM:<a@b.test> SIZE=x\r\n"
                     b"MAIL FROM:<a@b.test> SIZE=10000\r\n")
    assert codes(out) == ["250", "552", "501", "250"]


def test_data_after_bdat_and_bdat_out_of_sequence_consumes_chunk() -> None:
    out, events = session(b"EHLO c\r\nBDAT 6\r\nNOOP\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\n"
                          b"BDAT 3\r\nabcDATA\r\nRSET\r\n")
    assert codes(out) == ["250", "503", "250", "250", "250", "503", "250"]
    assert not [e for e in events if isinstance(e, Message)]


# --------------------------------------------------------------------------------------------------------
# BDAT with binary data (RFC 3030)


def test_bdat_8bit_every_byte_value() -> None:
    # Every octet but NUL, CR and LF, in CRLF lines, split across chunks: kept byte for byte (RFC 3030 §3 with
    # BODY=8BITMIME; BINARYMIME is not offered).
    octets = bytes(b for b in range(256) if b not in (0, 10, 13))
    payload = (octets + b"\r\n") * 4 + b".\r\n..\r\n"
    head = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\n"
    script = head + b"BDAT 300\r\n" + payload[:300] + b"BDAT %d LAST\r\n" % (len(payload) - 300) + payload[300:]
    whole = session(script)
    assert codes(whole[0]) == ["250", "250", "250", "250", "250"]
    assert b"250 2.0.0 300 octets received" in whole[0]
    msgs = [e for e in whole[1] if isinstance(e, Message)]
    assert msgs[0].raw == payload and msgs[0].chunked
    for i in range(1, len(script), 7):
        assert drive(make(), [script[:i], script[i:]]) == whole


@pytest.mark.parametrize("chunks", [
    [b"a\r\n\x00.\r\n"],  # the input: NUL
    [b"hello\r.\r\n"],  # bare CR
    [b"a\r", b"b\r\n"],  # a CR ending one chunk, not followed by LF in the next
    [b"a\nb\r\n"],  # bare LF
    [b"a\r\n", b"\n"],  # LF at the start of a chunk, no CR before it
    [b"a\r\nb\r"],  # a CR at the very end of the message
])
def test_bdat_stray_cr_lf_nul_refused(chunks: list[bytes]) -> None:
    script = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\n"
    for i, c in enumerate(chunks):
        script += b"BDAT %d%s\r\n" % (len(c), b" LAST" if i == len(chunks) - 1 else b"") + c
    out, events = session(script + b"NOOP\r\n")
    assert codes(out)[-2:] == ["550", "250"]
    assert b"550 5.6.0" in out
    assert not [e for e in events if isinstance(e, Message)]


def test_bdat_crlf_split_between_chunks_accepted() -> None:
    out, events = session(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\nBDAT 2\r\na\r"
                          b"BDAT 1 LAST\r\n\n")
    assert [e.raw for e in events if isinstance(e, Message)] == [b"a\r\n"]


def test_bdat_oversize_and_following_chunks_fail_until_last() -> None:
    out, events = session(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\nBDAT 8\r\n12345678"
                          b"BDAT 3\r\nabcBDAT 1 LAST\r\nzNOOP\r\n", max_size=10)
    assert codes(out) == ["250", "250", "250", "250", "552", "552", "250"]
    assert not [e for e in events if isinstance(e, Message)]


def test_bdat_syntax() -> None:
    out, _ = session(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\nBDAT\r\nBDAT x\r\n"
                     b"BDAT 1 FIRST\r\nBDAT 0 LAST\r\n")
    assert codes(out) == ["250", "250", "250", "501", "501", "501", "250"]


def test_bdat_chunk_size_with_leading_zeros_is_a_chunk() -> None:
    """RFC 3030 §2: chunk-size is 1*DIGIT, so leading zeros are allowed however many; refusing the command would
    leave its chunk (sent without waiting) to be read as commands."""
    chunk = b"RSET\r\nQUIT\r\n"
    out, events = session(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\n"
                          b"BDAT " + b"0" * 30 + b"%d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert [e.raw for e in events if isinstance(e, Message)] == [chunk]
    assert codes(out) == ["250", "250", "250", "250", "250"]


@pytest.mark.parametrize("number", ["\u00b2", "\u0661\u0662", "\uff11"])
def test_bdat_and_size_numbers_are_ascii_digits(number: str) -> None:
    """RFC 3030 §2 chunk-size and RFC 1870 size-value are ASCII DIGITs (RFC 5234 B.1): a superscript or another
    script's digit is a 501, never an exception from int()."""
    out, events = session((f"EHLO c\r\nMAIL FROM:<a@b.test> SIZE={number}\r\nMAIL FROM:<a@b.test>\r\n"
                           f"RCPT TO:<r@mx.test>\r\nBDAT {number} LAST\r\nQUIT\r\n").encode())
    assert codes(out) == ["250", "501", "250", "250", "501", "221"]
    assert not [e for e in events if isinstance(e, Message)]


@pytest.mark.parametrize("line,code", [
    (b"MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ+2B1", "250"),
    (b"MAIL FROM:<a@b.test> RET=ALL", "501"),
    (b"MAIL FROM:<a@b.test> ENVID=a=b", "501"),
    (b"MAIL FROM:<a@b.test> BODY=BINARYMIME", "504"),
    (b"MAIL FROM:<a@b.test> BODY=9BIT", "501"),
    (b"MAIL FROM:<a@b.test> AUTH=<>", "250"),
    (b"MAIL FROM:<a@b.test> AUTH=u+2Bx@b.test", "250"),
    (b"MAIL FROM:<a@b.test> FOO=bar", "555"),
    (b"MAIL FROM:<a@b.test> SMTPUTF8=yes", "501"),
    (b"MAIL FROM: <a@b.test>", "250"),
    (b"MAIL FROM:a@b.test", "501"),
    (b"MAIL TO:<a@b.test>", "501"),
    ("MAIL FROM:<ü@b.test>".encode(), "553"),
    ("MAIL FROM:<ü@b.test> SMTPUTF8".encode(), "250"),
    (b"MAIL FROM:<\xff@b.test>", "500"),
])
def test_mail_parameters(line: bytes, code: str) -> None:
    out, _ = session(b"EHLO c\r\n" + line + b"\r\n")
    assert codes(out) == ["250", code]


@pytest.mark.parametrize("line,code", [
    (b"RCPT TO:<r@mx.test> NOTIFY=NEVER", "250"),
    (b"RCPT TO:<r@mx.test> NOTIFY=NEVER,SUCCESS", "501"),
    (b"RCPT TO:<r@mx.test> NOTIFY=SUCCESS,SUCCESS", "501"),
    (b"RCPT TO:<r@mx.test> NOTIFY=sometimes", "501"),
    (b"RCPT TO:<r@mx.test> ORCPT=rfc822;r@mx.test", "250"),
    (b"RCPT TO:<r@mx.test> ORCPT=rfc822", "501"),
    (b"RCPT TO:<r@mx.test> XFOO", "555"),
    (b"RCPT TO:<>", "501"),
    (b"RCPT TO:<postmaster>", "250"),
    (b"RCPT TO:<someone>", "501"),
    ("RCPT TO:<ü@mx.test>".encode(), "553"),
])
def test_rcpt_parameters(line: bytes, code: str) -> None:
    out, _ = session(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n" + line + b"\r\n")
    assert codes(out) == ["250", "250", code]


def test_too_many_recipients_452() -> None:
    rcpts = b"".join(b"RCPT TO:<r%d@mx.test>\r\n" % i for i in range(7))
    out, _ = session(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n" + rcpts, max_recipients=5)
    assert codes(out) == ["250", "250"] + ["250"] * 5 + ["452", "452"]
    assert b"452 4.5.3" in out


# --------------------------------------------------------------------------------------------------------
# Limits and errors


def test_line_too_long_500_and_session_goes_on() -> None:
    core = make(line_length=1000)
    out, _ = drive(core, [b"NOOP " + b"x" * 2000 + b"\r\nNOOP\r\n"])
    assert codes(out) == ["500", "250"]
    out, _ = drive(core, [b"NOOP " + b"x" * 1500, b"y" * 3000, b"z\r\nNOOP\r\n"])
    assert codes(out) == ["500", "250"]
    assert core.pending_input == 0


def test_nul_in_command() -> None:
    out, _ = session(b"NO\x00OP\r\nNOOP\r\n")
    assert codes(out) == ["500", "250"]


def test_error_limit_closes_with_421() -> None:
    out, events = session(b"BAD\r\n" * 10, max_errors=3)
    assert codes(out) == ["500", "500", "500", "421"]
    assert isinstance(events[-1], Closed) and events[-1].reason == "errors"


def test_bare_lf_commands_accepted() -> None:
    out, _ = session(b"EHLO c\nNOOP\n")
    assert codes(out) == ["250", "250"]


def test_ehlo_resets_transaction_and_rset() -> None:
    core = make()
    drive(core, [b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\n"])
    assert core.state is State.RCPT
    drive(core, [b"EHLO c\r\n"])
    assert core.state is State.READY and core.txn is None
    drive(core, [b"MAIL FROM:<a@b.test>\r\nRSET\r\n"])
    assert core.state is State.READY


def test_rejected_recipient_keeps_state_mail_and_data_gets_554() -> None:
    def answer(core: ServerCore, ev: object) -> None:
        if isinstance(ev, RcptTo):
            core.send(R.R550_NO_SUCH_USER)
        else:
            default_answer(core, ev)

    out, _ = drive(make(), [b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\nDATA\r\n"], answer)
    assert codes(out) == ["250", "250", "550", "554"]


# --------------------------------------------------------------------------------------------------------
# SASL framing (RFC 4954)


def test_auth_login_challenge_flow() -> None:
    got: list[object] = []

    def answer(core: ServerCore, ev: object) -> None:
        got.append(ev)
        if isinstance(ev, AuthStart):
            core.auth_challenge(b"Username:")
        elif isinstance(ev, AuthResponse) and ev.data == b"user":
            core.auth_challenge(b"Password:")
        elif isinstance(ev, AuthResponse):
            core.auth_done(R.R235_AUTH_OK, "user@x.test")

    core = make()
    out, _ = drive(core, [b"EHLO c\r\nAUTH LOGIN\r\n", base64.b64encode(b"user") + b"\r\n",
                          base64.b64encode(b"pw") + b"\r\nAUTH PLAIN\r\n"], answer)
    assert out.split(b"\r\n")[-5:-1] == [b"334 VXNlcm5hbWU6", b"334 UGFzc3dvcmQ6",
                                         b"235 2.7.0 Authentication successful", b"503 5.5.1 Already authenticated"]
    assert core.authenticated == "user@x.test"
    assert got[0] == AuthStart("LOGIN", None)


@pytest.mark.parametrize("line,expected", [
    (b"*", b"501 5.7.0"),
    (b"!!notbase64", b"501 5.5.2"),
])
def test_auth_cancel_and_bad_base64(line: bytes, expected: bytes) -> None:
    core = make()
    out, events = drive(core, [b"EHLO c\r\nAUTH PLAIN\r\n" + line + b"\r\nNOOP\r\n"])
    assert expected in out and out.endswith(b"250 2.0.0 OK\r\n")
    assert any(isinstance(e, AuthAborted) for e in events)
    assert core.mode is Mode.COMMAND and not core.authenticated


def test_auth_initial_response_forms() -> None:
    seen: list[object] = []

    def answer(core: ServerCore, ev: object) -> None:
        seen.append(ev)
        core.auth_done(R.R535_AUTH_FAILED)

    out, _ = drive(make(), [b"EHLO c\r\nAUTH PLAIN =\r\nAUTH plain AGEAYg==\r\nAUTH PLAIN %%%\r\n"
                            b"AUTH CRAM-MD5\r\nAUTH\r\n"], answer)
    assert seen == [AuthStart("PLAIN", b""), AuthStart("PLAIN", b"\x00a\x00b")]
    assert codes(out) == ["250", "535", "535", "501", "504", "501"]


def test_auth_refusal_when_no_mechanism() -> None:
    core = make(auth=())
    core.auth_refusal = R.R530_TLS_REQUIRED
    out, _ = drive(core, [b"EHLO c\r\nAUTH PLAIN\r\n"])
    assert codes(out) == ["250", "530"]


def test_sasl_line_limit() -> None:
    def answer(core: ServerCore, ev: object) -> None:
        if isinstance(ev, AuthStart):
            core.auth_challenge(b"")

    core = make()
    out, events = drive(core, [b"EHLO c\r\nAUTH PLAIN\r\n" + b"A" * 13000 + b"\r\nNOOP\r\n"], answer)
    assert codes(out) == ["250", "334", "500", "250"]
    assert any(isinstance(e, AuthAborted) for e in events)


# --------------------------------------------------------------------------------------------------------
# STARTTLS


def test_starttls_forgets_the_dialogue() -> None:
    core = make()
    drive(core, [b"EHLO c\r\nSTARTTLS\r\n"])
    assert core.tls and core.state is State.INIT and not core.helo
    out, _ = drive(core, [b"MAIL FROM:<a@b.test>\r\nEHLO c\r\nSTARTTLS\r\n"])
    assert codes(out) == ["503", "250", "503"]
    assert b"STARTTLS" not in out.split(b"\r\n", 1)[1].split(b"503")[0]


def test_starttls_with_args_or_unavailable() -> None:
    out, _ = session(b"EHLO c\r\nSTARTTLS now\r\n")
    assert codes(out) == ["250", "501"]
    out, _ = session(b"EHLO c\r\nSTARTTLS\r\n", starttls=False)
    assert codes(out) == ["250", "502"]


# --------------------------------------------------------------------------------------------------------
# Bodies past `spill_at` go out as BodyData (the session's staging file); the core holds a bounded amount


def _spilled_body(events: list[object]) -> tuple[bytes, list[Message]]:
    data = b"".join(e.data for e in events if isinstance(e, BodyData))
    return data, [e for e in events if isinstance(e, Message)]


def _stuffed_lines(n: int) -> tuple[bytes, bytes]:
    """(raw, stuffed) of n lines, many starting with dots, some long."""
    rng = random.Random(n)
    lines = []
    for i in range(n):
        line = b"." * rng.randrange(3) + bytes(rng.choice(b"ab.\xe9 ") for _ in range(rng.randrange(200)))
        if i % 97 == 0:
            line += b"z" * 70_000  # longer than a piece: cut inside the line
        lines.append(line + b"\r\n")
    raw = b"".join(lines)
    stuffed = b"".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)
    return raw, stuffed


def test_data_spills_past_threshold_byte_exact_at_any_split() -> None:
    raw, stuffed = _stuffed_lines(3000)
    head = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\nDATA\r\n"
    script = head + stuffed + b".\r\nNOOP\r\n"
    rng = random.Random(3)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(script)), 40))
        parts = [script[a:b] for a, b in zip([0] + cuts, cuts + [len(script)])]
        core = ServerCore("mx.test", max_size=len(raw), max_recipients=5, spill_at=100_000)
        out, events = drive(core, parts)
        spilled, msgs = _spilled_body(events)
        assert codes(out)[-2:] == ["250", "250"]
        assert len(msgs) == 1 and msgs[0].spilled and msgs[0].size == len(raw)
        assert spilled + msgs[0].raw == raw
        assert len(msgs[0].raw) < 100_000 + DATA_PIECE


def test_data_over_size_is_dropped_as_it_arrives_and_spilled_file_discarded() -> None:
    core = ServerCore("mx.test", max_size=300_000, max_recipients=5, spill_at=100_000)
    out, events = drive(core, [b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\nDATA\r\n"])
    line = b"x" * 998 + b"\r\n"
    for _ in range(1000):  # 1 MB, over three times the limit
        o, ev = drive(core, [line * 10])
        events += ev
        assert core.held_bytes < 100_000 + DATA_PIECE + 10_000
    out, ev = drive(core, [b".\r\nNOOP\r\n"])
    events += ev
    assert codes(out) == ["552", "250"] and b"552 5.3.4" in out
    assert sum(isinstance(e, BodyDiscarded) for e in events) == 1
    assert not [e for e in events if isinstance(e, Message)]
    assert sum(len(e.data) for e in events if isinstance(e, BodyData)) <= 300_000


def test_bdat_spills_and_rset_discards() -> None:
    core = ServerCore("mx.test", max_size=10_000_000, max_recipients=5, spill_at=1000)
    chunk = (b"y" * 98 + b"\r\n") * 30
    out, events = drive(core, [b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\n",
                               b"BDAT %d\r\n" % len(chunk) + chunk, b"RSET\r\n"])
    assert codes(out)[-2:] == ["250", "250"]
    assert [type(e).__name__ for e in events if isinstance(e, (BodyData, BodyDiscarded))][-1] == "BodyDiscarded"
    out, events = drive(core, [b"MAIL FROM:<a@b.test>\r\nRCPT TO:<r@mx.test>\r\n",
                               b"BDAT %d\r\n" % len(chunk) + chunk, b"BDAT 3 LAST\r\nz\r\n"])
    spilled, msgs = _spilled_body(events)
    assert spilled + msgs[0].raw == chunk + b"z\r\n" and msgs[0].spilled
    assert not [e for e in events if isinstance(e, BodyDiscarded)]


def test_every_command_outside_its_states_has_its_sequence_reply() -> None:
    # states.py invariant 1: the dispatcher looks the reply up; a missing pair would be a KeyError, not a 503.
    from postroom.smtp.states import ALLOWED, SEQUENCE_ERRORS

    missing = [(verb, state) for verb, states in ALLOWED.items() for state in State
               if state not in states and (verb, state) not in SEQUENCE_ERRORS]
    assert missing == []
    assert all(code.code in (503, 554) for code in SEQUENCE_ERRORS.values())
