"""POP3 commands answered from the connection's callback (pop3/session.py invariant 9, net/connection.py invariant
12) against the real server over real sockets: the same answers however the client's bytes are split, in
order, over plaintext and TLS; QUIT that arrives with the client's FIN still removes; a client that reads its
replies late gets every one, exact; the idle timeout counts from the last command and still closes a silent
session; a command completed after a pause is not taken for a trickle; a client that never reads holds the
server to bounded memory (plaintext and TLS); errors, overlong lines, bytes after QUIT and a close without QUIT,
pipelined with commands answered inline."""

from __future__ import annotations

import random
import socket
import time
from typing import Any

import pytest

from postroom.store.api import AppendRequest

ADDR = "ines@example.org"
PW = "inline pass word"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


def message(i: int, size: int = 0) -> bytes:
    body = f"line one of {i}\r\n.a line starting with a dot\r\n..two\r\n.\r\nend {i}\r\n"
    filler = "".join(f"filler {j} of message {i}: the quick brown fox.\r\n" for j in range(size // 44))
    return (f"From: bob@example.org\r\nTo: {ADDR}\r\nSubject: message {i}\r\n\r\n" + filler + body).encode()


def fill(server: Any, msgs: list[bytes]) -> int:
    user = server.add_user(ADDR, PW)
    inbox = server.run(server.store.get_mailbox(user.id, "INBOX"))
    server.run(server.store.append_many(inbox.id, [AppendRequest(raw=m) for m in msgs]))
    return int(inbox.id)


def uids(server: Any, mailbox_id: int) -> list[int]:
    return [m.uid for m in server.run(server.store.list_messages(mailbox_id))]


def stuffed(raw: bytes) -> bytes:
    """RFC 1939 §3: the message's lines, each starting "." given one more, then "." CRLF (an independent oracle:
    line by line, not the server's searches)."""
    lines = raw.split(b"\r\n")[:-1]  # these messages end with CRLF
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"


class Client:
    def __init__(self, server: Any, tls: bool = False) -> None:
        listener = "pop3s" if tls else "pop3"
        sock = socket.create_connection(("127.0.0.1", server.port(listener)), timeout=20)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = server.tls_client_context().wrap_socket(sock) if tls else sock
        self.buf = b""
        assert self.line().startswith(b"+OK")

    def fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        self.buf += chunk
        return bool(chunk)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self.fill():
                raise EOFError(self.buf)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def multi(self) -> bytes:
        """The rest of a multi-line reply, its terminator included."""
        while True:
            i = self.buf.find(b"\r\n.\r\n")
            if i >= 0:
                out, self.buf = self.buf[:i + 5], self.buf[i + 5:]
                return out
            if not self.fill():
                raise EOFError(self.buf)

    def login(self) -> None:
        self.sock.sendall(f"USER {ADDR}\r\nPASS {PW}\r\n".encode())
        assert self.line().startswith(b"+OK") and self.line().startswith(b"+OK")

    def replies(self, script: list[tuple[bytes, bool]]) -> list[bytes]:
        """Read the replies to `script` ((command, multi-line?) pairs), each whole."""
        out = []
        for _, multi in script:
            first = self.line() + b"\r\n"
            out.append(first + self.multi() if multi and first.startswith(b"+OK") else first)
        return out


SCRIPT: list[tuple[bytes, bool]] = [
    (b"STAT", False), (b"LIST", True), (b"UIDL 2", False), (b"RETR 1", True), (b"TOP 2 1", True), (b"NOOP", False),
    (b"RETR 3", True), (b"retr 2", True), (b"DELE 2", False), (b"LIST 2", False), (b"RETR 2", False),
    (b"RSET", False), (b"Retr 2", True), (b"RETR 9", False), (b"STAT", False),
]


def retrieve_in_order(c: Client, msgs: list[bytes], numbers: range) -> None:
    """RETR each of `numbers`, one at a time, each answer checked against its message (RFC 1939 §7: the
    octet count, then the byte-stuffed body)."""
    for n in numbers:
        c.sock.sendall(b"RETR %d\r\n" % n)
        assert c.line() == b"+OK %d octets" % len(msgs[n - 1]) and c.multi() == stuffed(msgs[n - 1])


def wait_until(done: Any, seconds: float = 20) -> None:
    """Until `done()` is true (the server acting on its own, with no command sent), or `seconds` passed."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def run_script(server: Any, pieces: list[bytes], tls: bool) -> list[bytes]:
    c = Client(server, tls)
    c.login()
    for piece in pieces:
        c.sock.sendall(piece)
        if len(pieces) > 1:
            time.sleep(0.002)  # so that most pieces arrive as reads of their own
    got = c.replies(SCRIPT)
    c.sock.sendall(b"QUIT\r\n")
    assert c.line().startswith(b"+OK")
    c.sock.close()
    return got


@pytest.mark.parametrize("tls", [False, True])
def test_same_answers_whole_byte_by_byte_and_at_random_splits(server: Any, tls: bool) -> None:
    msgs = [message(i) for i in (1, 2, 3)]
    inbox = fill(server, msgs)
    data = b"".join(cmd + b"\r\n" for cmd, _ in SCRIPT)
    whole = run_script(server, [data], tls)
    # RFC 1939 answers, from the messages themselves
    sizes = [len(m) for m in msgs]
    assert whole[0] == b"+OK 3 %d\r\n" % sum(sizes)
    assert whole[1].endswith(b"".join(b"%d %d\r\n" % (i, s) for i, s in enumerate(sizes, 1)) + b".\r\n")
    assert whole[3] == b"+OK %d octets\r\n" % sizes[0] + stuffed(msgs[0])
    assert whole[6] == b"+OK %d octets\r\n" % sizes[2] + stuffed(msgs[2])
    assert whole[7] == whole[12] == b"+OK %d octets\r\n" % sizes[1] + stuffed(msgs[1])  # verbs in any case
    assert whole[9].startswith(b"-ERR") and whole[10].startswith(b"-ERR")  # deleted: invisible until RSET
    assert whole[13].startswith(b"-ERR no such message") and whole[14] == whole[0]
    assert run_script(server, [bytes([b]) for b in data], tls) == whole
    rng = random.Random(1939)
    for _ in range(3):
        cuts = sorted(rng.sample(range(1, len(data)), 12))
        assert run_script(server, [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])], tls) == whole
    assert uids(server, inbox) == [1, 2, 3]  # RSET before QUIT: nothing removed


def test_one_command_at_a_time_gives_the_same_answers(server: Any) -> None:
    # Each command its own chunk, sent when the last reply is whole: every RETR line takes the core's shortcut
    # (pop3/protocol.py invariant 7) or, spelt otherwise, the usual path; the answers are those of the script
    # sent whole.
    fill(server, [message(i) for i in (1, 2, 3)])
    whole = run_script(server, [b"".join(cmd + b"\r\n" for cmd, _ in SCRIPT)], False)
    c = Client(server)
    c.login()
    got = []
    for cmd, multi in SCRIPT:
        c.sock.sendall(cmd + b"\r\n")
        got += c.replies([(cmd, multi)])
    assert got == whole
    c.sock.sendall(b"QUIT\r\n")
    assert c.line().startswith(b"+OK")


def test_in_order_retrieval_reads_the_next_bodies_after_the_reply(server: Any, monkeypatch: Any) -> None:
    # pop3/session.py invariant 10: a client taking the maildrop in order, one RETR at a time, gets the reply to
    # the last body read ahead, and the next run is read then, without waiting for its next command; the bodies
    # are exact, and nothing is read past the end of the maildrop.
    from postroom.pop3.session import READ_AHEAD_COUNT

    run = READ_AHEAD_COUNT + 1  # bodies a read after a reply takes (and a first RETR with the next ones)
    msgs = [message(i) for i in range(1, 2 * run + 6)]
    inbox = fill(server, msgs)
    blob = {m.blob_id: n for n, m in enumerate(server.run(server.store.list_messages(inbox)), 1)}
    batches: list[list[int]] = []
    read_messages = server.store.read_messages

    async def recorded(blob_ids: Any) -> dict[str, bytes]:
        ids = list(blob_ids)
        batches.append([blob[b] for b in ids])
        return await read_messages(ids)

    monkeypatch.setattr(server.store, "read_messages", recorded)
    c = Client(server)
    c.login()
    retrieve_in_order(c, msgs, range(1, run + 1))
    wait_until(lambda: len(batches) >= 2)  # no command sent: the server reads on its own
    assert batches == [list(range(1, run + 1)), list(range(run + 1, 2 * run + 1))]
    retrieve_in_order(c, msgs, range(run + 1, len(msgs) + 1))
    c.sock.sendall(b"NOOP\r\n")
    assert c.line() == b"+OK"
    assert batches[2:] == [list(range(2 * run + 1, len(msgs) + 1))]
    c.sock.sendall(b"QUIT\r\n")
    assert c.line().startswith(b"+OK")


def test_a_failed_read_after_the_reply_answers_nothing(server: Any, monkeypatch: Any) -> None:
    # pop3/session.py invariant 10: the store out of reach while the next run is read after a reply: no reply
    # comes of it, and the next RETR reads its body itself (here the store is back: the exact body).
    from postroom.pop3.session import READ_AHEAD_COUNT
    from postroom.store.api import StoreUnavailable

    run = READ_AHEAD_COUNT + 1
    msgs = [message(i) for i in range(1, run + 3)]
    fill(server, msgs)
    calls: list[int] = []
    read_messages = server.store.read_messages

    async def second_fails(blob_ids: Any) -> dict[str, bytes]:
        ids = list(blob_ids)
        calls.append(len(ids))
        if len(calls) == 2:
            raise StoreUnavailable("the database cannot be used now (test)")
        return await read_messages(ids)

    monkeypatch.setattr(server.store, "read_messages", second_fails)
    c = Client(server)
    c.login()
    retrieve_in_order(c, msgs, range(1, run + 1))
    wait_until(lambda: len(calls) >= 2)
    assert calls == [run, 2]  # the failed read after the reply
    c.sock.sendall(b"NOOP\r\n")
    assert c.line() == b"+OK"  # nothing else was written before this reply
    c.sock.sendall(b"RETR %d\r\n" % (run + 1))
    assert c.line() == b"+OK %d octets" % len(msgs[run]) and c.multi() == stuffed(msgs[run])
    assert calls == [run, 2, 2]  # read by the RETR itself, with the one after it
    c.sock.sendall(b"QUIT\r\n")
    assert c.line().startswith(b"+OK")


def test_quit_that_comes_with_the_fin_still_removes(server: Any) -> None:
    msgs = [message(i) for i in (1, 2, 3)]
    inbox = fill(server, msgs)
    c = Client(server)
    c.login()
    c.sock.sendall(b"RETR 1\r\nDELE 1\r\nDELE 3\r\nQUIT\r\n")
    c.sock.shutdown(socket.SHUT_WR)  # the FIN right behind QUIT
    assert c.line() == b"+OK %d octets" % len(msgs[0]) and c.multi() == stuffed(msgs[0])
    assert c.line() == b"+OK message 1 deleted"
    assert c.line() == b"+OK message 3 deleted"
    assert c.line().endswith(b"signing off (1 messages left)")  # RFC 1939 §6: sent after the removal
    c.sock.close()
    assert uids(server, inbox) == [2]


def test_a_client_that_reads_late_gets_every_reply_in_order(server: Any) -> None:
    msgs = [message(i, 32 * 1024) for i in range(1, 21)]
    fill(server, msgs)
    c = Client(server)
    c.login()
    order = [(k * 7) % 20 + 1 for k in range(300)]  # out of order, repeated: read-ahead misses as well as hits
    c.sock.sendall(b"".join(b"RETR %d\r\n" % n for n in order))
    time.sleep(1.0)  # not reading: the server's output fills the socket buffers and its writes pause
    for n in order:
        assert c.line() == b"+OK %d octets" % len(msgs[n - 1])
        assert c.multi() == stuffed(msgs[n - 1])
    c.sock.sendall(b"QUIT\r\n")
    assert c.line().startswith(b"+OK")


@pytest.mark.parametrize("server_overrides", [{"auth": {"allow_plaintext": True},
                                               "limits": {"pop3_idle_seconds": 1.0}}])
def test_activity_keeps_the_session_and_silence_ends_it(server: Any) -> None:
    inbox = fill(server, [message(i) for i in (1, 2)])
    c = Client(server)
    c.login()
    c.sock.sendall(b"DELE 2\r\n")
    assert c.line() == b"+OK message 2 deleted"
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # three idle timeouts of commands, one every fifth of it
        c.sock.sendall(b"NOOP\r\n")
        assert c.line() == b"+OK"
        c.sock.sendall(b"RETR 1\r\n")
        assert c.line().startswith(b"+OK") and c.multi().endswith(b"\r\n.\r\n")
        time.sleep(0.2)
    assert c.line().startswith(b"-ERR autologout")  # then silence: RFC 1939 §3's autologout timer
    assert not c.fill()  # closed
    assert uids(server, inbox) == [1, 2]  # no UPDATE (invariant 1)


@pytest.mark.parametrize("server_overrides", [{"auth": {"allow_plaintext": True},
                                               "limits": {"command_deadline_seconds": 1.0}}])
def test_a_command_completed_after_a_pause_leaves_no_deadline(server: Any) -> None:
    fill(server, [message(1)])
    c = Client(server)
    c.login()
    c.sock.sendall(b"NO")
    time.sleep(0.3)
    c.sock.sendall(b"OP\r\n")
    assert c.line() == b"+OK"
    time.sleep(3.0)  # three command deadlines after "NO" began
    c.sock.sendall(b"STAT\r\n")
    assert c.line().startswith(b"+OK 1 ")  # not "-ERR command not received in time"
    c.sock.sendall(b"QUIT\r\n")
    assert c.line().startswith(b"+OK")


def _held_by_pop3_connections(server: Any) -> list[tuple[int, int, int]]:
    """(input buffered, output not yet sent, high-water mark) of each open POP3 connection, read in the server's
    loop: the memory a session holds for its peer (net/connection.py invariant 3, pop3/session.py invariant 9)."""
    import gc

    from postroom.net.connection import Connection

    async def look() -> list[tuple[int, int, int]]:
        return [(len(o._buffer), o._transport.get_write_buffer_size() if o._transport is not None else 0,
                 o._high_water)
                for o in gc.get_objects() if isinstance(o, Connection) and o.protocol == "pop3" and not o._lost]

    held: list[tuple[int, int, int]] = server.run(look())
    return held


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("command", [b"LIST", b"STAT", b"RETR 1"])
def test_a_client_that_never_reads_holds_bounded_memory(server: Any, tls: bool, command: bytes,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of pipelined commands whose replies the client never reads: answered inline until the output
    pauses, then buffered until reading pauses. While the connection's output is paused the session writes at
    most DRAIN_ABOVE bytes and one reply (session invariant 9: inline answers stop, the loop drains), and what
    the server holds for the session stays bounded (the input by the high-water mark, net/connection.py
    invariant 3; the output by the transport's pause, which over TLS comes at asyncio's SSL buffer limit)."""
    from postroom.net.connection import Connection
    from postroom.pop3.session import DRAIN_ABOVE

    msgs = [message(i, 2000) for i in range(1, 101)]
    fill(server, msgs)
    while_paused = [0, 0]  # bytes written since the output paused, the most of that seen

    def counted(method: Any) -> Any:
        def write(self: Connection, data: Any) -> None:
            if self.protocol == "pop3" and self._paused_writing:
                while_paused[0] += len(data) if isinstance(data, bytes) else sum(map(len, data))
                while_paused[1] = max(while_paused)
            method(self, data)
        return write

    def resumed(self: Connection) -> None:
        while_paused[0] = 0
        real_resume(self)

    real_resume = Connection.resume_writing
    monkeypatch.setattr(Connection, "write", counted(Connection.write))
    monkeypatch.setattr(Connection, "writelines", counted(Connection.writelines))
    monkeypatch.setattr(Connection, "resume_writing", resumed)
    c = Client(server, tls)
    c.login()
    c.sock.settimeout(3)
    burst = (command + b"\r\n") * 20000
    sent = 0
    try:
        while sent < 100_000_000:
            c.sock.sendall(burst)  # blocks, then times out, once the server stops reading
            sent += len(burst)
    except (TimeoutError, OSError):
        pass
    held = _held_by_pop3_connections(server)
    assert len(held) == 1
    buffered, unsent, high_water = held[0]
    assert buffered <= high_water + 256 * 1024  # paused above the mark: at most one more read of the transport
    largest_reply = 50 + max(len(stuffed(m)) for m in msgs[:1]) + 20 * len(msgs)
    assert while_paused[1] <= DRAIN_ABOVE + largest_reply
    assert unsent < 4 * 1024 * 1024  # bounded, whatever was sent
    c.sock.close()


@pytest.mark.parametrize("tls", [False, True])
def test_pipelined_errors_overlong_lines_and_bytes_after_quit(server: Any, tls: bool) -> None:
    """Commands answered inline and those that end the session, pipelined together: the error that reaches
    `errors_per_session` closes the session with nothing after it and no UPDATE (RFC 1939 §6); an overlong line
    is refused and the next command answered; DELE, RSET, DELE, QUIT remove only what the last DELE marked, and
    bytes after QUIT are not answered; a connection closed after a DELE, without QUIT, removes nothing."""
    inbox = fill(server, [message(i) for i in (1, 2, 3)])
    c = Client(server, tls)
    c.login()
    c.sock.sendall(b"BOGUS\r\n" * 25 + b"DELE 1\r\nQUIT\r\n")
    replies = []
    while c.fill():
        pass
    replies = c.buf.split(b"\r\n")
    assert replies[-1] == b"" and len(replies) == 21  # errors_per_session (20) replies, then the close
    assert all(r.startswith(b"-ERR") for r in replies[:20]) and b"too many errors" in replies[19]
    assert uids(server, inbox) == [1, 2, 3]

    c = Client(server, tls)
    c.login()
    c.sock.sendall(b"NOOP " + b"x" * 9000 + b"\r\nSTAT\r\nDELE 1\r\nRSET\r\nDELE 2\r\nQUIT\r\nDELE 3\r\nNOOP\r\n")
    assert c.line() == b"-ERR line too long"
    assert c.line().startswith(b"+OK 3 ")
    assert c.line() == b"+OK message 1 deleted"
    assert c.line().startswith(b"+OK maildrop has 3 messages")
    assert c.line() == b"+OK message 2 deleted"
    assert c.line().endswith(b"signing off (2 messages left)")
    while c.fill():
        pass
    assert c.buf == b""  # nothing for the bytes after QUIT
    assert uids(server, inbox) == [1, 3]

    c = Client(server, tls)
    c.login()
    c.sock.sendall(b"DELE 1\r\nDELE 2\r\nNOOP\r\n")  # the maildrop is UIDs 1 and 3 now
    assert [c.line() for _ in range(3)] == [b"+OK message 1 deleted", b"+OK message 2 deleted", b"+OK"]
    c.sock.close()
    c = Client(server, tls)  # the maildrop lock is free again only once the server saw the close
    for _ in range(100):
        c.sock.sendall(f"USER {ADDR}\r\nPASS {PW}\r\n".encode())
        assert c.line().startswith(b"+OK")
        if c.line().startswith(b"+OK"):
            break
        time.sleep(0.05)
    c.sock.sendall(b"STAT\r\n")
    assert c.line().startswith(b"+OK 2 ")  # RFC 1939 §6: no UPDATE without QUIT
    assert uids(server, inbox) == [1, 3]
