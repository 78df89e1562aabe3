"""The honest "no service yet" handlers, checked byte for byte and with Python's own clients."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import smtplib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from postroom.config import LimitsConfig
from postroom.net import ListenerSpec, NetServer
from postroom.net.unavailable import unavailable_handler

T = TypeVar("T")
HOST = "mx.example.test"


def with_server(protocol: str, body: Callable[[str, int], Awaitable[T]],
                limits: LimitsConfig | None = None) -> T:
    limits = limits or LimitsConfig(line_length=1000)

    async def main() -> T:
        server = NetServer([ListenerSpec(protocol, "127.0.0.1", 0, unavailable_handler(protocol, HOST),
                                         protocol=protocol)], None, limits)
        await server.start()
        try:
            return await asyncio.wait_for(body(*server.addresses[protocol]), 10)
        finally:
            await server.stop(1.0)
    return asyncio.run(main())


def test_smtplib_gets_554_at_connect() -> None:
    async def body(host: str, port: int) -> smtplib.SMTPConnectError:
        def client() -> smtplib.SMTPConnectError:
            with pytest.raises(smtplib.SMTPConnectError) as info:
                smtplib.SMTP(host, port, timeout=5)
            return info.value
        return await asyncio.to_thread(client)
    err = with_server("smtp", body)
    assert err.smtp_code == 554
    assert err.smtp_error == f"5.3.2 {HOST} Postroom: no SMTP service on this listener yet".encode()


def test_smtp_dialogue_bytes() -> None:
    async def body(host: str, port: int) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"EHLO client.example\r\nMAIL FROM:<a@b>\r\n" + b"x" * 1500 + b"\r\nquit\r\n")
        data = await reader.read()
        writer.close()
        return data
    assert with_server("smtp", body) == (
        f"554 5.3.2 {HOST} Postroom: no SMTP service on this listener yet\r\n".encode()
        + b"503 5.5.1 No SMTP service on this listener; only QUIT is accepted\r\n" * 2
        + b"500 5.5.2 Line too long\r\n"
        + b"221 2.0.0 Bye\r\n")


def test_smtp_error_limit() -> None:
    async def body(host: str, port: int) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"NOOP\r\n" * 10)
        data = await reader.read()
        writer.close()
        return data
    data = with_server("smtp", body, LimitsConfig(line_length=1000, errors_per_session=3))
    assert data.split(b"\r\n")[1:] == [b"503 5.5.1 No SMTP service on this listener; only QUIT is accepted"] * 2 + [
        f"421 4.7.0 {HOST} Too many errors, closing connection".encode(), b""]


def test_imap_bye_greeting() -> None:
    async def body(host: str, port: int) -> tuple[bytes, str]:
        reader, writer = await asyncio.open_connection(host, port)
        raw = await reader.read()
        writer.close()

        def client() -> str:
            with pytest.raises(imaplib.IMAP4.error) as info:
                imaplib.IMAP4(host, port, timeout=5)
            return str(info.value)
        return raw, await asyncio.to_thread(client)
    raw, err = with_server("imap", body)
    assert raw == b"* BYE [UNAVAILABLE] Postroom: no IMAP service on this listener yet\r\n"
    assert "BYE [UNAVAILABLE]" in err


class ClosingPOP3(poplib.POP3):
    """poplib leaves its socket open when the greeting is -ERR; close it so the test leaks nothing."""

    def _getresp(self) -> bytes:
        try:
            return super()._getresp()  # type: ignore[misc]
        except poplib.error_proto:
            self.close()
            raise


def test_pop3_err_greeting() -> None:
    async def body(host: str, port: int) -> tuple[bytes, poplib.error_proto]:
        reader, writer = await asyncio.open_connection(host, port)
        raw = await reader.read()
        writer.close()

        def client() -> poplib.error_proto:
            with pytest.raises(poplib.error_proto) as info:
                ClosingPOP3(host, port, timeout=5)
            return info.value
        return raw, await asyncio.to_thread(client)
    raw, err = with_server("pop3", body)
    assert raw == b"-ERR [SYS/PERM] Postroom: no POP3 service on this listener yet\r\n"
    assert err.args[0] == raw.rstrip(b"\r\n")


def test_unknown_protocol() -> None:
    with pytest.raises(ValueError):
        unavailable_handler("gopher", HOST)
