"""A listener configured as "*:port" accepts on IPv4 and IPv6 alike (the mail listeners and the web listener)."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

from postroom import config as config_mod
from postroom.app import Postroom


def _free_port_on_both() -> int:
    """A port free on 0.0.0.0 and on :: at this moment."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6) as s6:
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s6.bind(("::", 0))
            port = s6.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET) as s4:
                    s4.bind(("0.0.0.0", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free on both families")


def _greeting(family: socket.AddressFamily, host: str, port: int) -> bytes:
    with socket.socket(family) as s:
        s.settimeout(10)
        s.connect((host, port))
        return s.recv(100)


def test_star_listens_on_ipv4_and_ipv6(tmp_path: Path) -> None:
    smtp, http = _free_port_on_both(), _free_port_on_both()
    listeners = {name: "" for name in config_mod.LISTENER_NAMES}
    listeners.update(smtp=f"*:{smtp}", http=f"*:{http}")
    cfg = config_mod.load(None, {"server": {"data_dir": str(tmp_path / "data"), "shutdown_grace_seconds": 1},
                                 "listeners": listeners, "delivery": {"enabled": False}})

    async def go() -> None:
        server = Postroom(cfg)
        await server.start()
        try:
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                greeting = await asyncio.to_thread(_greeting, family, host, smtp)
                assert greeting.startswith(b"220 "), (host, greeting)
                url = f"http://{host if family == socket.AF_INET else '[::1]'}:{http}/healthz"
                status = await asyncio.to_thread(lambda u=url: urllib.request.urlopen(u, timeout=10).status)
                assert status == 200, url
        finally:
            await server.stop()

    asyncio.run(go())
