"""What a `postroom serve` process loads at start depends on its configuration (issue 17: memory of the idle
server): the web stack (starlette, uvicorn, jinja2, nh3, the webmail) only with a web listener, and then before
the fork of `server.workers`, so the workers share one copy (app.py `import_web`, workers.py invariant 5).

Read from the real processes' memory maps (/proc/PID/maps): nh3, the HTML sanitiser the webmail imports, is a
shared library, so its file is mapped exactly when the web stack was imported."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from serve_support import start_serve

WEB_LIBRARY = "/nh3/"  # the web stack's one native library (web/render.py)


def conf(tmp_path: Path, http: bool) -> Path:
    path = tmp_path / "postroom.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nshutdown_grace_seconds = 2\n'
        '[listeners]\nsmtp = "127.0.0.1:0"\nsubmission = ""\nsubmissions = ""\nimap = "127.0.0.1:0"\nimaps = ""\n'
        f'pop3 = ""\npop3s = ""\nhttp = "{"127.0.0.1:0" if http else ""}"\nhttps = ""\n'
        '[delivery]\nenabled = false\n[inbound]\nspf = false\ndkim = false\ndmarc = false\n')
    return path


def maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def children(pid: int) -> list[int]:
    return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_a_server_without_a_web_listener_does_not_load_the_web_stack(tmp_path: Path) -> None:
    proc, ports = start_serve(conf(tmp_path, http=False))
    try:
        assert "smtp" in ports and "http" not in ports
        assert WEB_LIBRARY not in maps(proc.pid)
    finally:
        stop(proc)


def test_a_server_with_a_web_listener_loads_it_once_before_the_fork(tmp_path: Path) -> None:
    proc, ports = start_serve(conf(tmp_path, http=True), workers=2)
    try:
        assert "http" in ports
        workers = children(proc.pid)
        assert len(workers) == 2
        assert WEB_LIBRARY in maps(proc.pid)  # the parent imported it: the workers' copy is the parent's pages
        assert all(WEB_LIBRARY in maps(pid) for pid in workers)
    finally:
        stop(proc)
