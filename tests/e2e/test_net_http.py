"""/healthz and /metrics through the real uvicorn server on port 0, in the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import pytest

from postroom.config import LimitsConfig
from postroom.metrics import Metrics
from postroom.net.connection import Connection
from postroom.net.listener import ListenerSpec, NetServer
from postroom.web import create_app, serve_http

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 15)
    return asyncio.run(main())


def test_healthz_and_metrics() -> None:
    metrics = Metrics()
    state: dict[str, Any] = {"status": "ok", "store": "ok"}
    metrics.set_queue_length_callback(lambda: 7)
    metrics.observe_commit(0.004, 12)
    metrics.observe_lock_wait(0.002)
    metrics.message_accepted()

    async def health() -> dict[str, Any]:
        if state.get("raise"):
            raise RuntimeError("database is gone")
        return dict(state)

    async def quit_at_once(conn: Connection) -> None:
        conn.write(b"hi\r\n")

    async def main() -> list[Any]:
        net = NetServer([ListenerSpec("smtp", "127.0.0.1", 0, quit_at_once, protocol="smtp")], None,
                        LimitsConfig(), metrics)
        await net.start()
        http = await serve_http(create_app(metrics, health), "127.0.0.1", 0)
        assert http.port != 0
        base = f"http://127.0.0.1:{http.port}"
        out: list[Any] = []
        try:
            reader, writer = await asyncio.open_connection(*net.addresses["smtp"])
            await reader.read()
            writer.close()
            await asyncio.sleep(0.05)
            async with httpx.AsyncClient(base_url=base) as client:
                r = await client.get("/healthz")
                out.append((r.status_code, r.json()))
                state["status"] = "degraded"
                r = await client.get("/healthz")
                out.append((r.status_code, r.json()))
                state["raise"] = True
                r = await client.get("/healthz")
                out.append((r.status_code, r.json()))
                r = await client.get("/metrics")
                out.append((r.status_code, r.headers["content-type"], r.text))
                r = await client.get("/nowhere")
                out.append(r.status_code)
        finally:
            await http.stop()
            await http.stop()  # harmless twice
            await net.stop(1.0)
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(base + "/healthz")
        return out

    ok, degraded, broken, (m_status, m_type, m_text), missing = run(main())
    assert ok == (200, {"status": "ok", "store": "ok"})
    assert degraded == (503, {"status": "degraded", "store": "ok"})
    assert broken == (503, {"status": "error", "error": "RuntimeError"})
    assert m_status == 200 and m_type.startswith("text/plain")
    assert 'postroom_sessions_total{protocol="smtp"} 1.0' in m_text
    assert 'postroom_sessions_open{protocol="smtp"} 0.0' in m_text
    assert "postroom_queue_length 7.0" in m_text
    assert "postroom_messages_accepted_total 1.0" in m_text
    assert "postroom_store_commit_seconds_count 1.0" in m_text
    assert "postroom_store_lock_wait_seconds_count 1.0" in m_text
    assert 'postroom_store_commit_ops_bucket{le="16.0"} 1.0' in m_text
    assert missing == 404


def test_separate_registries() -> None:
    a, b = Metrics(), Metrics()
    a.message_delivered(3)
    assert b"postroom_messages_delivered_total 3.0" in a.render()[0]
    assert b"postroom_messages_delivered_total 0.0" in b.render()[0]


def test_http_bind_failure_is_reported() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()

            async def health() -> dict[str, Any]:
                return {"status": "ok"}
            with pytest.raises(OSError, match="listener http"):
                await serve_http(create_app(Metrics(), health), "127.0.0.1", taken.getsockname()[1])
    run(main())


def test_http_socket_is_tcp_so_asyncio_sets_nodelay() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose `proto` is IPPROTO_TCP; with proto 0 every keep-alive
    response waited for the client's delayed ACK (~40 ms) before its body left (web/server.py `_bind`)."""
    from postroom.web.server import _bind

    socks = _bind("127.0.0.1", 0)
    try:
        assert [sock.proto for sock in socks] == [socket.IPPROTO_TCP]
    finally:
        for sock in socks:
            sock.close()
