"""COMPRESS=DEFLATE (RFC 4978) end to end: imaplib has no COMPRESS, so the client side is zlib over a raw socket
(`Deflated`), in plain text and over implicit TLS (compressed, then encrypted: §4), plus a decompression bomb
that must meet the command-size limit, not the server's memory."""

from __future__ import annotations

import os
import re
import socket
import ssl
import zlib
from pathlib import Path
from typing import Any

import pytest
from imap_support import Raw, fill, message, wire_imap

ADDR = "zed@example.org"
PW = "zed-secret"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


class Deflated:
    """The client half of RFC 4978 over a socket already past `COMPRESS DEFLATE`: raw deflate (wbits -15) both
    ways, each command sync-flushed; lines read like `Raw.line` (literals inlined)."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.z = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.unz = zlib.decompressobj(-15)
        self.buf = b""

    def send(self, data: bytes, flush: bool = True) -> None:
        out = self.z.compress(data)
        if flush:
            out += self.z.flush(zlib.Z_SYNC_FLUSH)
        if out:
            self.sock.sendall(out)

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.buf += self.unz.decompress(chunk)

    def _readline(self) -> bytes:
        while b"\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def line(self) -> bytes:
        line = self._readline()
        while line.endswith(b"}\r\n"):
            n = int(line[line.rfind(b"{") + 1:-3].rstrip(b"+"))
            while len(self.buf) < n:
                self._more()
            line, self.buf = line + self.buf[:n], self.buf[n:]
            line += self._readline()
        return line

    def cmd(self, text: str | bytes) -> list[bytes]:
        data = text.encode() if isinstance(text, str) else text
        self.send(data + b"\r\n")
        tag = data.split(b" ", 1)[0] + b" "
        out = []
        while True:
            out.append(self.line())
            if out[-1].startswith(tag):
                return out


def compressed_session(raw: Raw) -> Deflated:
    raw.login(ADDR, PW)
    assert raw.cmd("z COMPRESS DEFLATE") == [b"z OK DEFLATE active\r\n"]
    return Deflated(raw.sock)


def test_capability_is_advertised(server: Any) -> None:
    fill(server, ADDR, PW, 0)
    raw = Raw(server.port("imap"))
    assert b"COMPRESS=DEFLATE" in raw.cmd("c CAPABILITY")[0].split()


def test_commands_and_responses_are_deflated(server: Any) -> None:
    fill(server, ADDR, PW, 3)
    raw = Raw(server.port("imap"))
    z = compressed_session(raw)
    assert z.cmd("1 NOOP") == [b"1 OK NOOP completed\r\n"]
    assert z.cmd("2 SELECT INBOX")[-1].startswith(b"2 OK [READ-WRITE]")
    got = z.cmd("3 FETCH 2 BODY.PEEK[]")
    assert got[0] == b"* 2 FETCH (BODY[] {%d}\r\n" % len(message(2)) + message(2) + b")\r\n"
    assert got[-1] == b"3 OK FETCH completed\r\n"
    # a literal inside a compressed command (RFC 4978 §3: everything after COMPRESS is compressed)
    z.send(b"4 APPEND INBOX {%d}\r\n" % len(message(9)))
    assert z.line().startswith(b"+ ")
    z.send(message(9) + b"\r\n")
    lines = []
    while not (lines and lines[-1].startswith(b"4 ")):
        lines.append(z.line())
    assert re.match(rb"4 OK \[APPENDUID \d+ 4\] APPEND completed", lines[-1])
    assert z.cmd("5 LOGOUT")[-1] == b"5 OK LOGOUT completed\r\n"


def test_compress_twice_is_compressionactive(server: Any) -> None:
    fill(server, ADDR, PW, 0)
    z = compressed_session(Raw(server.port("imap")))
    assert z.cmd("2 COMPRESS DEFLATE") == [b"2 NO [COMPRESSIONACTIVE] Compression is already active\r\n"]
    assert z.cmd("3 NOOP") == [b"3 OK NOOP completed\r\n"]


def test_compress_rules(server: Any) -> None:
    fill(server, ADDR, PW, 0)
    raw = Raw(server.port("imap"))
    assert raw.cmd("1 COMPRESS DEFLATE")[0].startswith(b"1 BAD")  # RFC 4978 §5: command-auth, not before login
    raw.login(ADDR, PW)
    assert raw.cmd("2 COMPRESS GZIP")[0] == b"2 BAD Unknown compression mechanism\r\n"
    assert raw.cmd("3 COMPRESS")[0].startswith(b"3 BAD")
    # plaintext pipelined after COMPRESS would be read as deflate data: refused, nothing switched
    raw.send(b"4 COMPRESS DEFLATE\r\n5 NOOP\r\n")
    assert raw.until(b"4") == [b"4 BAD Data pipelined after COMPRESS\r\n"]
    assert raw.until(b"5") == [b"5 OK NOOP completed\r\n"]


def test_compress_inside_tls(server: Any) -> None:
    """RFC 4978 §4: over TLS the data is compressed, then encrypted."""
    fill(server, ADDR, PW, 2)
    raw = Raw(server.port("imaps"), ctx=server.tls_client_context())
    assert isinstance(raw.sock, ssl.SSLSocket) and raw.sock.compression() is None
    z = compressed_session(raw)
    assert z.cmd("1 SELECT INBOX")[-1].startswith(b"1 OK [READ-WRITE]")
    got = z.cmd("2 FETCH 1:2 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert got[:2] == [b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: note 1\r\n\r\n)\r\n",
                       b"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: note 2\r\n\r\n)\r\n"]
    assert z.cmd("3 COMPRESS DEFLATE")[0].startswith(b"3 NO [COMPRESSIONACTIVE]")


def _peak_reset() -> int:
    """Reset this process's VmHWM (the server runs in it) and return the RSS it starts from."""
    Path("/proc/self/clear_refs").write_text("5")
    return _vm("VmHWM")


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc clear_refs")
def test_decompression_bomb_meets_the_command_limit(server: Any) -> None:
    """256 MiB of one line, sent as about a quarter of a megabyte of deflate: the server inflates it a buffer at a time,
    the command-size limit refuses the line (BAD), and the session goes on; the process grows by nowhere near
    the inflated size."""
    fill(server, ADDR, PW, 0)
    z = compressed_session(Raw(server.port("imap"), timeout=120))
    assert z.cmd("0 NOOP") == [b"0 OK NOOP completed\r\n"]
    start = _peak_reset()
    chunk = b"x" * (1 << 20)
    bomb = [z.z.compress(b"1 NOOP ")]
    bomb += [z.z.compress(chunk) for _ in range(256)]
    bomb.append(z.z.compress(b"\r\n2 NOOP\r\n") + z.z.flush(zlib.Z_SYNC_FLUSH))
    z.sock.sendall(b"".join(bomb))  # at once, so the server reads it in large pieces
    first = z.line()
    assert first.startswith(b"1 BAD") and b"too long" in first
    assert z.line() == b"2 OK NOOP completed\r\n"
    grown = _vm("VmHWM") - start
    assert grown < 32 << 20, f"peak RSS grew {grown >> 20} MiB for a 256 MiB inflated line"
