"""The POP3 core fed bytes: every command in every state, errors, SASL, STLS, and the same conversation fed
whole, byte by byte, at random splits and pipelined."""

from __future__ import annotations

import base64
import dataclasses
import random

import pytest

from postroom.pop3.protocol import (
    NEED_DATA,
    CheckPassword,
    Entry,
    Options,
    POP3Core,
    Retrieve,
    SaslResponse,
    Send,
    StartSasl,
    StartTls,
    State,
    Update,
    dot_stuff,
    make_uidl,
    parse_number,
    top,
)

MESSAGES = [
    b"Subject: one\r\n\r\nfirst line\r\n.starts with a dot\r\nlast\r\n",
    b"Subject: two\r\nX: y\r\n\r\nbody\r\n",
    b".dot header?\r\n\r\n..two dots\r\n.\r\nend",
]
ENTRIES = [Entry(uid=10 + i, size=len(m), blob_id=f"b{i}", uidl=make_uidl(7, 10 + i)) for i, m in enumerate(MESSAGES)]
PASSWORD = "right pass"


class Driver:
    """Plays the session's part with canned answers; returns everything the server would have written."""

    def __init__(self, **options: object) -> None:
        opts = {"user_without_tls": True, **options}
        self.core = POP3Core(Options(**opts))  # type: ignore[arg-type]
        self.events: list[object] = []
        self.updates: list[tuple[int, ...]] = []

    def feed(self, data: bytes) -> bytes:
        self.core.receive_data(data)
        return self.pump()

    def pump(self) -> bytes:
        out = bytearray()
        core = self.core
        while True:
            ev = core.next_event()
            if ev is NEED_DATA:
                return bytes(out)
            self.events.append(ev)
            if isinstance(ev, Send):
                out += b"".join(ev.chunks)
                if ev.close:
                    return bytes(out)
            elif isinstance(ev, CheckPassword):
                if ev.password == PASSWORD and ev.username == "alice":
                    out += core.login_ok("alice", ENTRIES)
                else:
                    out += core.login_failed()
            elif isinstance(ev, StartSasl):
                if ev.initial is None:
                    out += core.sasl_challenge(b"")
                else:
                    out += self._plain(ev.initial)
            elif isinstance(ev, SaslResponse):
                out += self._plain(ev.data)
            elif isinstance(ev, StartTls):
                out += core.tls_go_ahead()
                core.tls_started()
            elif isinstance(ev, Retrieve):
                out += b"".join(core.message_reply(ev.number, MESSAGES[ev.entry.uid - 10], ev.lines))
            elif isinstance(ev, Update):
                self.updates.append(ev.uids)
                out += core.update_done(len(ev.uids))
            else:  # pragma: no cover
                raise AssertionError(ev)
            if core.closed:
                return bytes(out)

    def _plain(self, data: bytes) -> bytes:
        if data == b"\x00alice\x00" + PASSWORD.encode():
            return self.core.login_ok("alice", ENTRIES)
        return self.core.login_failed()

    def login(self) -> None:
        assert self.feed(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n").endswith(
            b"+OK alice has 3 messages (%d octets)\r\n" % sum(len(m) for m in MESSAGES))
        assert self.core.state is State.TRANSACTION


def lines(reply: bytes) -> list[bytes]:
    return reply.split(b"\r\n")[:-1]


def test_greeting_has_no_apop_timestamp() -> None:
    g = POP3Core(Options()).greeting()
    assert g.startswith(b"+OK ") and g.endswith(b"\r\n") and b"<" not in g


# --- CAPA ---------------------------------------------------------------------------------------------


def capa(d: Driver) -> list[bytes]:
    out = lines(d.feed(b"CAPA\r\n"))
    assert out[0].startswith(b"+OK") and out[-1] == b"."
    return out[1:-1]


def test_capa_without_tls_and_plaintext_refused() -> None:
    caps = capa(Driver(user_without_tls=False))
    assert caps == [b"TOP", b"UIDL", b"SASL SCRAM-SHA-256", b"STLS", b"RESP-CODES", b"AUTH-RESP-CODE",
                    b"PIPELINING", b"IMPLEMENTATION Postroom"]


def test_capa_over_tls() -> None:
    caps = capa(Driver(user_without_tls=False, tls=True))
    assert b"USER" in caps and b"SASL PLAIN LOGIN SCRAM-SHA-256" in caps and b"STLS" not in caps


def test_capa_expire_and_login_delay_only_when_configured() -> None:
    caps = capa(Driver())
    assert not any(c.startswith((b"EXPIRE", b"LOGIN-DELAY")) for c in caps)
    caps = capa(Driver(expire="NEVER", login_delay=900))
    assert b"EXPIRE NEVER" in caps and b"LOGIN-DELAY 900" in caps


def test_capa_in_transaction_has_no_stls_and_rejects_arguments() -> None:
    d = Driver()
    d.login()
    assert b"STLS" not in capa(d)
    assert d.feed(b"CAPA x\r\n").startswith(b"-ERR")


def test_capa_without_stls_context() -> None:
    assert b"STLS" not in capa(Driver(stls=False))
    assert Driver(stls=False).feed(b"STLS\r\n").startswith(b"-ERR")


# --- AUTHORIZATION ------------------------------------------------------------------------------------


def test_user_refused_before_tls_with_auth_code() -> None:
    d = Driver(user_without_tls=False)
    assert d.feed(b"USER alice\r\n").startswith(b"-ERR [AUTH] ")
    assert d.feed(b"PASS x\r\n").startswith(b"-ERR")  # no USER accepted, so no PASS
    assert d.core.state is State.AUTHORIZATION


def test_user_pass_ok_and_wrong_password() -> None:
    d = Driver()
    assert d.feed(b"USER alice\r\n") == b"+OK send PASS\r\n"
    assert d.feed(b"PASS wrong\r\n") == b"-ERR [AUTH] Authentication failed\r\n"
    assert d.core.state is State.AUTHORIZATION
    d.login()


def test_pass_keeps_spaces_and_needs_user_right_before() -> None:
    d = Driver()
    assert d.feed(b"PASS x\r\n").startswith(b"-ERR USER first")
    assert d.feed(b"USER alice\r\nNOOP\r\nPASS right pass\r\n").split(b"\r\n")[2].startswith(b"-ERR USER first")
    d.login()  # "right pass" with its space was the password
    ev = [e for e in d.events if isinstance(e, CheckPassword)][-1]
    assert ev.password == PASSWORD and PASSWORD not in repr(ev)


@pytest.mark.parametrize("line", [b"USER", b"USER a b", b"USER alice\r\nPASS"])
def test_user_pass_missing_arguments(line: bytes) -> None:
    assert lines(Driver().feed(line + b"\r\n"))[-1].startswith(b"-ERR")


@pytest.mark.parametrize("verb", [b"STAT", b"LIST", b"LIST 1", b"RETR 1", b"DELE 1", b"NOOP", b"RSET",
                                  b"TOP 1 1", b"UIDL", b"UIDL 1"])
def test_transaction_commands_refused_in_authorization(verb: bytes) -> None:
    d = Driver()
    assert d.feed(verb + b"\r\n") == b"-ERR %s is not allowed in the AUTHORIZATION state\r\n" % verb.split()[0]
    assert d.core.state is State.AUTHORIZATION


@pytest.mark.parametrize("verb", [b"USER alice", b"PASS x", b"AUTH PLAIN", b"STLS"])
def test_authorization_commands_refused_in_transaction(verb: bytes) -> None:
    d = Driver()
    d.login()
    assert d.feed(verb + b"\r\n").startswith(b"-ERR %s is not allowed in the TRANSACTION" % verb.split()[0])


def test_apop_and_unknown_commands() -> None:
    d = Driver()
    assert d.feed(b"APOP alice 0123456789abcdef0123456789abcdef\r\n").startswith(b"-ERR APOP is not offered")
    assert d.feed(b"XYZZY\r\n") == b"-ERR unknown command\r\n"
    assert d.feed(b"\r\n") == b"-ERR unknown command\r\n"
    assert d.feed(b"\xff\xfe 1\r\n") == b"-ERR unknown command\r\n"
    assert d.feed(b"noop\r\n").startswith(b"-ERR NOOP is not allowed")  # case-insensitive verbs


def test_quit_in_authorization_closes_without_update() -> None:
    d = Driver()
    assert d.feed(b"QUIT\r\n").startswith(b"+OK")
    assert d.core.closed and d.updates == [] and d.core.quit


def test_login_failed_codes_and_in_use() -> None:
    core = POP3Core(Options(user_without_tls=True))
    core.receive_data(b"USER alice\r\nPASS x\r\n")
    assert isinstance(core.next_event(), Send)
    assert isinstance(core.next_event(), CheckPassword)
    assert core.login_failed("IN-USE", "maildrop is locked") == b"-ERR [IN-USE] maildrop is locked\r\n"
    assert core.errors == 0 and core.state is State.AUTHORIZATION  # not a protocol error (invariant 5)


def test_waiting_for_the_session_is_enforced() -> None:
    core = POP3Core(Options(user_without_tls=True))
    core.receive_data(b"USER a\r\nPASS b\r\nNOOP\r\n")
    core.next_event()
    core.next_event()
    with pytest.raises(RuntimeError):
        core.next_event()


# --- SASL ---------------------------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_plain_initial_response() -> None:
    d = Driver(tls=True)
    assert d.feed(b"AUTH PLAIN " + b64(b"\x00alice\x00" + PASSWORD.encode()) + b"\r\n").startswith(b"+OK alice")
    assert d.core.state is State.TRANSACTION


def test_auth_plain_with_challenge_and_failure() -> None:
    d = Driver(tls=True)
    assert d.feed(b"AUTH plain\r\n") == b"+ \r\n"
    assert d.feed(b64(b"\x00alice\x00nope") + b"\r\n") == b"-ERR [AUTH] Authentication failed\r\n"
    assert d.feed(b"AUTH PLAIN =\r\n") == b"-ERR [AUTH] Authentication failed\r\n"  # "=": empty response
    assert [e.initial for e in d.events if isinstance(e, StartSasl)] == [None, b""]


def test_auth_cancel_and_bad_base64() -> None:
    d = Driver(tls=True)
    assert d.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert d.feed(b"*\r\n") == b"-ERR authentication cancelled\r\n"
    assert d.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert d.feed(b"!!!\r\n").startswith(b"-ERR response is not valid base64")
    assert d.feed(b"AUTH PLAIN !!!\r\n").startswith(b"-ERR initial response is not valid base64")
    assert d.core.state is State.AUTHORIZATION
    d.login()  # the session goes on


def test_auth_mechanism_checks() -> None:
    d = Driver()
    assert d.feed(b"AUTH PLAIN\r\n").startswith(b"-ERR [AUTH] PLAIN is not allowed without TLS")
    assert d.feed(b"AUTH CRAM-MD5\r\n").startswith(b"-ERR unsupported mechanism")
    assert d.feed(b"AUTH PLAIN a b\r\n").startswith(b"-ERR")
    assert lines(d.feed(b"AUTH\r\n")) == [b"+OK mechanisms follow", b"SCRAM-SHA-256", b"."]


# --- STLS ---------------------------------------------------------------------------------------------


def test_stls_then_user_allowed() -> None:
    d = Driver(user_without_tls=False)
    assert d.feed(b"STLS\r\n") == b"+OK Begin TLS negotiation\r\n"
    assert d.core.tls and b"USER" in capa(d)
    assert d.feed(b"STLS\r\n").startswith(b"-ERR TLS is already active")
    d.login()


def test_stls_refused_when_plaintext_follows() -> None:
    core = POP3Core(Options())
    core.receive_data(b"STLS\r\nCAPA\r\n")
    assert isinstance(core.next_event(), StartTls)
    assert core.buffered > 0
    assert core.tls_refused().startswith(b"-ERR")
    assert not core.tls
    assert isinstance(core.next_event(), Send)  # CAPA, answered in plaintext as it was sent


# --- TRANSACTION --------------------------------------------------------------------------------------


@pytest.fixture
def d() -> Driver:
    drv = Driver()
    drv.login()
    return drv


def total() -> int:
    return sum(len(m) for m in MESSAGES)


def test_stat_list_uidl(d: Driver) -> None:
    assert d.feed(b"STAT\r\n") == b"+OK 3 %d\r\n" % total()
    assert lines(d.feed(b"LIST\r\n")) == [b"+OK 3 messages (%d octets)" % total()] + [
        b"%d %d" % (i, len(m)) for i, m in enumerate(MESSAGES, 1)] + [b"."]
    assert d.feed(b"LIST 2\r\n") == b"+OK 2 %d\r\n" % len(MESSAGES[1])
    assert lines(d.feed(b"UIDL\r\n")) == [b"+OK unique-id listing follows", b"1 7.10", b"2 7.11", b"3 7.12", b"."]
    assert d.feed(b"UIDL 3\r\n") == b"+OK 3 7.12\r\n"


@pytest.mark.parametrize("cmd", [b"LIST", b"UIDL", b"RETR", b"DELE", b"TOP"])
@pytest.mark.parametrize("arg", [b"0", b"4", b"99999999"])
def test_no_such_message(d: Driver, cmd: bytes, arg: bytes) -> None:
    extra = b" 0" if cmd == b"TOP" else b""
    assert d.feed(cmd + b" " + arg + extra + b"\r\n") == b"-ERR no such message\r\n"
    assert d.core.errors == 0


@pytest.mark.parametrize("cmd", [b"LIST", b"UIDL", b"RETR", b"DELE", b"TOP"])
@pytest.mark.parametrize("arg", [b"x", b"-1", b"1.5", b"9" * 5000])
def test_malformed_message_numbers(d: Driver, cmd: bytes, arg: bytes) -> None:
    extra = b" 0" if cmd == b"TOP" else b""
    assert d.feed(cmd + b" " + arg + extra + b"\r\n") == b"-ERR no such message\r\n"
    assert d.core.errors == 1
    assert d.feed(b"NOOP\r\n") == b"+OK\r\n"


@pytest.mark.parametrize("line", [b"RETR", b"DELE", b"TOP", b"TOP 1", b"RETR 1 2", b"LIST 1 2", b"UIDL 1 2",
                                  b"STAT 1", b"RSET 1", b"NOOP 1", b"QUIT 1", b"TOP 1 x", b"TOP 1 -1"])
def test_missing_or_extra_arguments(d: Driver, line: bytes) -> None:
    assert d.feed(line + b"\r\n").startswith(b"-ERR ")
    assert d.core.state is State.TRANSACTION


def test_retr_is_dot_stuffed_and_exact(d: Driver) -> None:
    out = d.feed(b"RETR 1\r\n")
    assert out == (b"+OK %d octets\r\n" % len(MESSAGES[0])
                   + b"Subject: one\r\n\r\nfirst line\r\n..starts with a dot\r\nlast\r\n.\r\n")
    out = d.feed(b"RETR 3\r\n")
    assert out.split(b"\r\n", 1)[1] == b"..dot header?\r\n\r\n...two dots\r\n..\r\nend\r\n.\r\n"


def test_retr_octets_are_the_octets_sent_for_bare_lf() -> None:
    # RFC 1939 §11: the count is of the message as sent; a message stored with bare LF line ends (73 octets,
    # 6 lines) goes out with CRLF, so 79 octets arrive before the terminator.
    raw = b"From: bob@example.org\nTo: alice@example.org\nSubject: LF\n\nline one\nline 2\n"
    assert (len(raw), raw.count(b"\n")) == (73, 6)
    core = POP3Core(Options(user_without_tls=True))
    core.login_ok("alice", [Entry(1, 79, "b", "7.1")])
    first, *rest = core.message_reply(1, raw, None)
    sent = b"".join(rest)
    assert first == b"+OK 79 octets\r\n"
    assert sent.endswith(b"\r\n.\r\n") and len(sent) - len(b".\r\n") == 79
    # an unterminated last line is ended before the terminator: counted too
    first, *rest = core.message_reply(1, b"A: b\r\n\r\nend", None)
    assert first == b"+OK 13 octets\r\n" and b"".join(rest) == b"A: b\r\n\r\nend\r\n.\r\n"


def test_top(d: Driver) -> None:
    assert d.feed(b"TOP 1 0\r\n") == b"+OK top of message follows\r\nSubject: one\r\n\r\n.\r\n"
    assert d.feed(b"TOP 1 2\r\n").endswith(b"\r\n\r\nfirst line\r\n..starts with a dot\r\n.\r\n")
    assert d.feed(b"TOP 2 100\r\n").split(b"\r\n", 1)[1] == MESSAGES[1] + b".\r\n"


def test_dele_rset_and_deleted_messages_are_invisible(d: Driver) -> None:
    assert d.feed(b"DELE 2\r\n") == b"+OK message 2 deleted\r\n"
    assert d.feed(b"DELE 2\r\n") == b"-ERR message 2 already deleted\r\n"
    for cmd in (b"RETR 2", b"LIST 2", b"UIDL 2", b"TOP 2 1"):
        assert d.feed(cmd + b"\r\n") == b"-ERR message 2 is deleted\r\n"
    assert d.feed(b"STAT\r\n") == b"+OK 2 %d\r\n" % (total() - len(MESSAGES[1]))
    assert b"\r\n2 " not in d.feed(b"LIST\r\n") and b"\r\n2 " not in d.feed(b"UIDL\r\n")
    assert d.feed(b"RSET\r\n") == b"+OK maildrop has 3 messages (%d octets)\r\n" % total()
    assert d.feed(b"RETR 2\r\n").startswith(b"+OK")
    assert d.core.errors == 0


def test_noop(d: Driver) -> None:
    assert d.feed(b"NOOP\r\n") == b"+OK\r\n"


def test_quit_enters_update_with_marked_uids(d: Driver) -> None:
    d.feed(b"DELE 3\r\nDELE 1\r\n")
    out = d.feed(b"QUIT\r\n")
    assert out.startswith(b"+OK") and b"1 messages left" in out
    assert d.updates == [(10, 12)] and d.core.state is State.UPDATE and d.core.closed
    assert d.feed(b"NOOP\r\n") == b""  # nothing after QUIT


def test_quit_without_deletions(d: Driver) -> None:
    assert d.feed(b"RETR 1\r\nQUIT\r\n").endswith(b"(3 messages left)\r\n")
    assert d.updates == [()]


def test_expire_zero_deletes_retrieved_not_topped() -> None:
    d = Driver(expire="0")
    d.login()
    d.feed(b"RETR 2\r\nTOP 1 0\r\nQUIT\r\n")
    assert d.updates == [(11,)]


def test_message_gone_and_internal_error_keep_session(d: Driver) -> None:
    d.core.receive_data(b"RETR 1\r\n")
    ev = d.core.next_event()
    assert isinstance(ev, Retrieve)
    assert d.core.message_gone(1) == b"-ERR message 1 was removed by another session\r\n"
    d.core.receive_data(b"RETR 1\r\n")
    d.core.next_event()
    assert d.core.internal_error().startswith(b"-ERR [SYS/TEMP]")
    assert d.feed(b"NOOP\r\n") == b"+OK\r\n"


def test_update_failed_says_so() -> None:
    core = POP3Core(Options())
    assert core.update_failed() == b"-ERR [SYS/TEMP] some deleted messages not removed\r\n"


# --- limits -------------------------------------------------------------------------------------------


def test_line_too_long_then_session_goes_on() -> None:
    d = Driver(line_limit=1000)
    assert d.feed(b"NOOP " + b"x" * 2000) == b"-ERR line too long\r\n"
    assert d.feed(b"y" * 5000) == b""  # the rest of that line is dropped as it arrives
    assert d.feed(b"zzz\r\nCAPA\r\n").startswith(b"+OK Capability")
    assert d.core.buffered == 0


def test_line_too_long_fed_byte_by_byte() -> None:
    d = Driver(line_limit=1000)
    out = b"".join(d.feed(bytes([c])) for c in b"USER " + b"a" * 1500 + b"\r\nQUIT\r\n")
    assert out.startswith(b"-ERR line too long\r\n+OK")


def test_too_many_errors_close() -> None:
    d = Driver(max_errors=3)
    out = d.feed(b"X\r\nX\r\nX\r\nNOOP\r\n")
    assert lines(out) == [b"-ERR unknown command", b"-ERR unknown command", b"-ERR too many errors, closing connection"]
    assert d.core.closed


def test_failed_logins_count_as_errors() -> None:
    d = Driver(max_errors=2)
    d.feed(b"USER alice\r\nPASS a\r\nUSER alice\r\nPASS b\r\nNOOP\r\n")
    assert d.core.closed


def test_bare_lf_lines_accepted() -> None:
    d = Driver()
    assert d.feed(b"USER alice\nPASS right pass\nSTAT\n").endswith(b"+OK 3 %d\r\n" % total())


# --- one conversation, fed every way ------------------------------------------------------------------

SCRIPT = (b"CAPA\r\nUSER alice\r\nPASS " + PASSWORD.encode() + b"\r\nSTAT\r\nLIST\r\nUIDL\r\nLIST 9\r\nTOP 1 1\r\n"
          b"RETR 1\r\nRETR 3\r\nDELE 1\r\nRETR 1\r\nBOGUS\r\nRSET\r\nDELE 2\r\nNOOP\r\nQUIT\r\nNOOP\r\n")


def run_split(chunks: list[bytes]) -> tuple[bytes, list[tuple[int, ...]]]:
    d = Driver()
    out = b"".join(d.feed(c) for c in chunks)
    return out, d.updates


def test_fed_whole_byte_by_byte_and_at_random_splits() -> None:
    whole, updates = run_split([SCRIPT])
    assert whole.count(b"+OK") == 14 and whole.count(b"-ERR") == 3 and updates == [(11,)]
    assert run_split([bytes([c]) for c in SCRIPT]) == (whole, updates)
    rng = random.Random(6)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(SCRIPT)), rng.randint(1, 20)))
        parts = [SCRIPT[a:b] for a, b in zip([0, *cuts], [*cuts, len(SCRIPT)])]
        assert run_split(parts) == (whole, updates)


def test_pipelined_replies_come_in_order() -> None:
    d = Driver()
    d.login()
    out = d.feed(b"NOOP\r\nSTAT\r\nLIST 1\r\nUIDL 2\r\nNOOP\r\n")
    assert lines(out) == [b"+OK", b"+OK 3 %d" % total(), b"+OK 1 %d" % len(MESSAGES[0]), b"+OK 2 7.11", b"+OK"]


# --- pure helpers -------------------------------------------------------------------------------------


def test_dot_stuff_cases() -> None:
    assert b"".join(dot_stuff(b"")) == b".\r\n"
    assert b"".join(dot_stuff(b".\r\n")) == b"..\r\n.\r\n"
    assert b"".join(dot_stuff(b"a\r\n.\r\n")) == b"a\r\n..\r\n.\r\n"
    assert b"".join(dot_stuff(b"no end")) == b"no end\r\n.\r\n"
    assert b"".join(dot_stuff(b"bare\n.lf\n")) == b"bare\r\n..lf\r\n.\r\n"
    # canonical bodies (CRLF everywhere, as the session says when the listed size is the length): RFC 1939 §3
    assert b"".join(dot_stuff(b"a\r\n.b\r\n..\r\nc.\r\n", canonical=True)) == b"a\r\n..b\r\n...\r\nc.\r\n.\r\n"
    assert b"".join(dot_stuff(b".x\r\n", canonical=True)) == b"..x\r\n.\r\n"
    assert b"".join(dot_stuff(b"no dot.\r\nat all\r\n", canonical=True)) == b"no dot.\r\nat all\r\n.\r\n"


def test_top_cases() -> None:
    assert top(b"A: b\r\n", 5) == b"A: b\r\n"  # no body
    assert top(b"A: b\r\n\r\n1\r\n2\r\n3", 2) == b"A: b\r\n\r\n1\r\n2\r\n"
    assert top(b"A: b\r\n\r\n1\r\n2\r\n3", 3) == b"A: b\r\n\r\n1\r\n2\r\n3"
    assert top(b"\r\nbody\r\nmore\r\n", 1) == b"\r\nbody\r\n"


def test_parse_number() -> None:
    assert parse_number("12") == 12
    assert [parse_number(x) for x in ("", "-1", "+1", "1e3", "١", "1234567890")] == [None] * 6


def test_uidl_is_within_rfc_limits() -> None:
    uidl = make_uidl(2**32 - 1, 2**32 - 1)
    assert 1 <= len(uidl) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uidl)


def test_read_ahead_names_the_buffered_and_the_next_messages(d: Driver) -> None:
    # The session reads these bodies with the one RETR 1 asks for (RFC 2449 §6.6 PIPELINING): the buffered RETR
    # and TOP lines first, in order, then, for a client going through in order, the messages after them; never a
    # deleted one, a repeat, one out of range, or one of a line not complete yet; within both budgets.
    d.feed(b"DELE 2\r\n")
    d.core.receive_data(b"NOOP\r\nRETR 2\r\nTOP 3 0\r\nRETR 9\r\nRETR x\r\nRETR 3\r\nRETR 1")
    assert [e.uid for e in d.core.read_ahead(1, 10, 1 << 20)] == [12]
    assert [e.uid for e in d.core.read_ahead(1, 10, 1 << 20)] == [12]  # looking consumes nothing
    assert [e.uid for e in d.core.read_ahead(1, 10, 1 << 20, sequential=True)] == [12]  # nothing after 3
    out = d.pump()  # the replies are unchanged by the looking
    assert out.count(b"+OK") == 3 and b"-ERR message 2 is deleted" in out
    d.core.receive_data(b"\r\n")
    assert [e.uid for e in d.core.read_ahead(2, 10, 1 << 20)] == [10]
    d.pump()
    d.feed(b"RSET\r\n")
    assert [e.uid for e in d.core.read_ahead(1, 10, 1 << 20, sequential=True)] == [11, 12]
    assert [e.uid for e in d.core.read_ahead(1, 1, 1 << 20, sequential=True)] == [11]  # the count budget
    assert [e.uid for e in d.core.read_ahead(1, 10, len(MESSAGES[1]), sequential=True)] == [11]  # the bytes
    assert d.core.read_ahead(1, 0, 1 << 20, sequential=True) == []
    assert POP3Core(Options()).read_ahead(1, 10, 1 << 20, sequential=True) == []  # not in TRANSACTION


def test_read_ahead_work_is_bounded_by_its_count() -> None:
    # No per-command work that grows with the maildrop: past 4 x max_count numbers (all deleted here) it stops.
    core = POP3Core(Options(user_without_tls=True))
    core.login_ok("alice", [Entry(i, 10, f"b{i}", make_uidl(7, i)) for i in range(1, 1001)])
    core.deleted.update(range(2, 900))
    assert core.read_ahead(1, 5, 1 << 20, sequential=True) == []
    assert [e.uid for e in core.read_ahead(895, 5, 1 << 20, sequential=True)] == [900, 901, 902, 903, 904]


def snapshot(core: POP3Core) -> dict[str, object]:
    """Everything the core holds, comparable (its line buffer's fields too)."""
    buf = core._in
    return {**{k: set(v) if isinstance(v, set) else v for k, v in vars(core).items() if k != "_in"},
            "_in": (bytes(buf.data), buf.scanned, buf.discarding, buf.tail)}


QUICK_CASES = [
    b"RETR 1\r\n", b"retr 3\r\n", b"RETR 01\r\n", b"RETR 000000002\r\n",  # taken
    b"Retr 1\r\n", b"RETR 1\n", b"RETR  1\r\n", b"RETR 1 \r\n", b"RETR\t1\r\n", b"RETR 0\r\n", b"RETR 4\r\n",
    b"RETR 2\r\n", b"RETR 0000000001\r\n", b"RETR \r\n", b"RETR x\r\n", b"RETR -1\r\n", b"RETR +1\r\n",
    b"RETR \xd9\xa1\r\n", b"RETR 1\r\nNOOP\r\n", b"RETR 1", b"RETR 1\r", b"TOP 1 0\r\n", b"DELE 1\r\n",
]


@pytest.mark.parametrize("line", QUICK_CASES)
@pytest.mark.parametrize("before", [b"", b"NOOP", b"RE"])
def test_quick_retr_is_the_usual_path_or_nothing(d: Driver, line: bytes, before: bytes) -> None:
    # Invariant 7: for one canonical RETR line the shortcut gives the event and the state the line buffer and the
    # command table give; for anything else (other spellings, errors, a deleted message, more or less than one
    # line, bytes buffered before it) it changes nothing and the usual path answers.
    d.feed(b"DELE 2\r\n")
    d.core.receive_data(before)
    twin = Driver()
    twin.login()
    twin.feed(b"DELE 2\r\n")
    twin.core.receive_data(before)
    was = snapshot(d.core)
    event = d.core.quick_retr(line)
    if event is None:
        assert snapshot(d.core) == was
        return
    assert line in QUICK_CASES[:4] and not before
    twin.core.receive_data(line)
    assert twin.core.next_event() == event == Retrieve(int(line[5:-2]), ENTRIES[int(line[5:-2]) - 1], None)
    assert snapshot(d.core) == snapshot(twin.core)
    assert d.core.message_reply(event.number, MESSAGES[event.number - 1], None) == twin.core.message_reply(
        event.number, MESSAGES[event.number - 1], None)
    assert d.core.next_event() is NEED_DATA


def test_quick_retr_only_in_transaction_ready_and_within_the_line_limit() -> None:
    # Not in AUTHORIZATION, not while the session owes an answer, not when closed, not past the line limit (RETR 1
    # CRLF is 8 octets: a limit of 8 takes it; at 7 the usual path says the line is too long).
    d = Driver()
    assert d.core.quick_retr(b"RETR 1\r\n") is None
    d.login()
    first = d.core.quick_retr(b"RETR 1\r\n")
    assert first is not None
    assert d.core.quick_retr(b"RETR 3\r\n") is None  # waiting for the session's answer to RETR 1
    d.core.message_reply(1, MESSAGES[0], None)
    d.core.options = dataclasses.replace(d.core.options, line_limit=8)
    assert d.core.quick_retr(b"RETR 1\r\n") == first
    d.core.message_reply(1, MESSAGES[0], None)
    d.core.options = dataclasses.replace(d.core.options, line_limit=7)
    assert d.core.quick_retr(b"RETR 1\r\n") is None
    assert d.feed(b"RETR 1\r\n") == b"-ERR line too long\r\n"
    d.core.closed = True
    assert d.core.quick_retr(b"RETR 1\r\n") is None


def test_store_unavailable_at_pass_is_sys_temp_and_the_session_stays() -> None:
    # RFC 3206 §4: SYS/TEMP, "a temporary system error"; the client may try again in the same session.
    d = Driver()
    d.core.receive_data(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
    user = d.core.next_event()
    assert isinstance(user, Send) and user.chunks[0].startswith(b"+OK")
    ev = d.core.next_event()
    assert isinstance(ev, CheckPassword)
    assert d.core.unavailable() == b"-ERR [SYS/TEMP] the mail store is unavailable, try again later\r\n"
    assert d.core.state is State.AUTHORIZATION and not d.core.closed
    d.login()  # the store is back: the same session signs in


def rfc1939_reply(raw: bytes) -> bytes:
    """RFC 1939 §3 and §11, line by line (an oracle independent of the core's searches): the octets of the
    message with CRLF line ends, then each line, one starting with "." given another, then "." CRLF."""
    text = raw.replace(b"\r\n", b"\n")
    lines = text.split(b"\n")
    if text.endswith(b"\n") or not text:
        lines.pop()  # the last line was ended (or there is none)
    octets = sum(len(ln) + 2 for ln in lines)
    body = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    return b"+OK %d octets\r\n" % octets + body + b".\r\n"


def test_retr_reply_is_rfc1939_byte_stuffing_for_any_body() -> None:
    # Bodies of lines that start, end or are made of dots, with CRLF or bare LF ends, ended or not: the listed
    # size is the CRLF size, as the store keeps it, so canonical bodies take the core's quick path and the others
    # its line-end pass.
    rng = random.Random(1939)
    pieces = [b".", b"..", b".a", b"a.", b"", b"text", b"x.y", b"\t."]
    bodies = [b"", b".", b".\r\n", b"\r\n", b"a\r\n.\r\n", b"a\n.\n"]
    for _ in range(300):
        lines = [rng.choice(pieces) for _ in range(rng.randint(1, 8))]
        ends = [rng.choice([b"\r\n", b"\r\n", b"\n"]) for _ in lines]
        body = b"".join(ln + end for ln, end in zip(lines, ends))
        bodies.append(body if rng.random() < 0.8 else body.rstrip(b"\r\n"))
    for raw in bodies:
        expected = rfc1939_reply(raw)
        octets = int(expected.split(b" ")[1])
        core = POP3Core(Options(user_without_tls=True))
        core.login_ok("alice", [Entry(uid=1, size=octets, blob_id="b", uidl="1.1")])
        core.receive_data(b"RETR 1\r\n")
        ev = core.next_event()
        assert isinstance(ev, Retrieve)
        assert b"".join(core.message_reply(ev.number, raw, ev.lines)) == expected, raw


def test_verbs_in_any_case_in_transaction(d: Driver) -> None:
    retr = d.feed(b"RETR 2\r\n")
    assert d.feed(b"retr 2\r\n") == d.feed(b"ReTr 2\r\n") == retr
    assert d.feed(b"stat\r\n") == d.feed(b"STAT\r\n")
    assert d.feed(b"R\xc9TR 2\r\n") == b"-ERR unknown command\r\n"  # only ASCII letters change case
    assert d.feed(b"apop x y\r\n").startswith(b"-ERR APOP is not offered")


def test_retr_ends_with_the_terminator_line_when_the_listing_disagrees() -> None:
    # A listed size equal to the length of a body with bare LFs (not what the store keeps, but the core must not
    # trust it for the framing): the reply still ends with CRLF "." CRLF (RFC 1939 §3).
    raw = b"Subject: two\n\nbare LF body\n"
    core = POP3Core(Options(user_without_tls=True))
    core.login_ok("alice", [Entry(uid=1, size=len(raw), blob_id="b", uidl="1.1")])
    core.receive_data(b"RETR 1\r\n")
    ev = core.next_event()
    assert isinstance(ev, Retrieve)
    assert b"".join(core.message_reply(ev.number, raw, ev.lines)).endswith(b"\r\n.\r\n")
