"""`postroom setup DOMAIN`: one command from a fresh machine to a mail server for DOMAIN on the Internet.

Theory of operation
-------------------
`run` does, in order, stopping at the first failure with a one-line reason (nothing half-written is left: the
configuration file is written last of the files that would change what a later run finds, after the store is
complete):

1. decide the paths: the configuration file (`--config`, else `/etc/postroom/postroom.toml` as root, else
   `./postroom.toml`), the data folder (`--data-dir`, else `/var/lib/postroom` as root, else `./postroom-data`),
   and the host name (`--hostname`, else this machine's fully qualified name when it has a dot, else
   `mail.DOMAIN`); refuse when the configuration file exists (unless `--force`);
2. create the store in the data folder, the domain with its DKIM keys, and the first user (`--user`, default
   `postmaster@DOMAIN`: RFC 5321 §4.5.1 requires that mailbox), its password asked twice on a terminal or,
   without one, generated and printed once;
3. write the configuration: as root, `server.user` = `--run-as` (default `postroom`) when that system user
   exists (else a line says how to make it); every listener on every address at its standard port (SMTP 25,
   submission 587, submissions 465, IMAP 143, IMAPS 993, POP3 110, POP3S 995, the web listeners 80 and 443);
4. write a systemd unit (`--systemd-unit PATH`; as root by default `/etc/systemd/system/postroom.service`;
   `--systemd-unit ""` writes none);
5. print every DNS record to publish (`postroom dns`'s set) and the steps left to the operator.

Invariants
1. An existing configuration file is never overwritten without `--force`; an existing user is never changed.
2. The generated password is printed once and stored only as its hashes (argon2 and SCRAM verifiers).
3. The files written hold no secret but are still created 0600 (configuration) / 0644 (unit); the data folder
   is 0700 (it holds password hashes and keys).
"""

from __future__ import annotations

import argparse
import getpass
import os
import pwd
import secrets
import shutil
import socket
import sys
import tomllib
from pathlib import Path

from postroom import adminops
from postroom import config as config_mod
from postroom.auth.passwords import make_credentials
from postroom.store import open_store

STANDARD_PORTS = {  # listener -> port (IANA; RFC 8314 for the implicit TLS ones)
    "smtp": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995,
    "http": 80, "https": 443,
}


class SetupError(Exception):
    """Setup cannot go on; the message says why and what to do."""


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_hostname(domain: str) -> str:
    """This machine's fully qualified name if it has one, else `mail.DOMAIN`."""
    fqdn = socket.getfqdn()
    return fqdn if "." in fqdn and not fqdn.startswith("localhost") else f"mail.{domain}"


def config_text(hostname: str, data_dir: Path, user: str = "") -> str:
    """The configuration file setup writes (TOML); `user`: the system user the server drops to (`server.user`)."""
    listeners = "\n".join(f'{name:<12}= "*:{port}"' for name, port in STANDARD_PORTS.items())
    run_as = f"user = \"{user}\"                 # started as root: bind the ports, then run as this user\n" \
        if user else ""
    return (f"# Written by `postroom setup`. Every key is documented in docs/CONFIG.md; `postroom config-sample`\n"
            f"# prints them all with their defaults, `postroom check` checks this file.\n"
            f"[server]\nhostname = \"{hostname}\"\ndata_dir = \"{data_dir}\"\n{run_as}\n"
            f"# \"*:port\": every address of the machine, IPv4 and IPv6\n[listeners]\n{listeners}\n")


def unit_text(config_path: Path, data_dir: Path) -> str:
    """A systemd service unit that runs `postroom serve` with this configuration."""
    exe = shutil.which("postroom") or str(Path(sys.executable).with_name("postroom"))
    return f"""[Unit]
Description=Postroom mail server (SMTP, submission, IMAP, POP3, web)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe} --config {config_path} serve
Restart=on-failure
RestartSec=5
LimitNOFILE=65536
# The server writes only its data folder.
ProtectSystem=strict
ReadWritePaths={data_dir}
ProtectHome=true
PrivateTmp=true
NoNewPrivileges=true

[Install]
WantedBy=multi-user.target
"""


def _password(generated: list[str]) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password for the first user (empty: generate one): ")
        if first:
            if getpass.getpass("Again: ") != first:
                raise SetupError("the two passwords differ; run setup again")
            try:
                return adminops.check_password(first)  # the rules every other way of setting one follows
            except adminops.AdminError as exc:
                raise SetupError(f"{exc}; run setup again") from None
    password = secrets.token_urlsafe(15)  # 120 bits
    generated.append(password)
    return password


async def _fill_store(cfg: config_mod.Config, domain: str, address: str, generated: list[str]) -> None:
    from postroom.adminops import make_dkim_keys

    if not cfg.data_path.exists():  # a folder that exists already is left as it is (it may hold other things)
        cfg.data_path.mkdir(parents=True, mode=0o700)
        os.chmod(cfg.data_path, 0o700)
    store = open_store(cfg.store_url, cfg.data_path)
    await store.open()
    try:
        if await store.get_domain(domain) is None:
            await store.add_domain(domain)
            await make_dkim_keys(store, domain)
            print(f"domain {domain} added, with DKIM keys")
        else:
            print(f"domain {domain} is already there")
        if await store.get_user(address) is None:
            password_hash, scram = make_credentials(_password(generated))
            await store.add_user(address, password_hash, scram)
            print(f"user {address} added")
        else:
            print(f"user {address} is already there: its password is unchanged")
    finally:
        await store.close()


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """The `setup` command (module essay). Returns the exit code; raises SetupError for the CLI to print."""
    import asyncio

    from postroom.adminops import normalize_address, normalize_domain
    from postroom.cli import cmd_dns, with_store

    domain = normalize_domain(args.domain)  # CliError for a bad one, printed by the CLI
    address = normalize_address(args.user or f"postmaster@{domain}")
    if address.rpartition("@")[2] != domain:
        raise SetupError(f"the first user must be in {domain}, not {address}")
    root = _is_root()
    config_path = Path(args.config or ("/etc/postroom/postroom.toml" if root else "postroom.toml")).absolute()
    data_dir = Path(args.data_dir or ("/var/lib/postroom" if root else "postroom-data")).absolute()
    hostname = args.hostname or default_hostname(domain)
    if config_path.exists() and not args.force:
        raise SetupError(f"{config_path} exists; setup writes a new one only with --force (or use --config PATH)")
    run_as = ""
    if root:  # the server drops root after binding its ports (process.py), to this user when it exists
        try:
            pwd.getpwnam(args.run_as)
            run_as = args.run_as
        except KeyError:
            print(f"; the system user {args.run_as!r} does not exist: the server will run as root (it warns). Make "
                  f"it with `useradd --system --no-create-home {args.run_as}`, then add user = \"{args.run_as}\" "
                  f"under [server]")
    text = config_text(hostname, data_dir, run_as)
    try:
        cfg = config_mod.load(None, tomllib.loads(text))
    except config_mod.ConfigError as exc:
        raise SetupError(f"the configuration would be invalid: {exc}") from None

    generated: list[str] = []
    asyncio.run(_fill_store(cfg, domain, address, generated))
    _write(config_path, text, 0o600)
    print(f"configuration written to {config_path}")
    unit = args.systemd_unit
    if unit is None:
        unit = "/etc/systemd/system/postroom.service" if root and Path("/etc/systemd/system").is_dir() else ""
    if unit:
        _write(Path(unit), unit_text(config_path, data_dir), 0o644)
        print(f"systemd unit written to {unit}: systemctl daemon-reload && systemctl enable --now postroom")
    else:
        print(f"no systemd unit written (as root it goes to /etc/systemd/system; or --systemd-unit PATH); start "
              f"the server with: postroom --config {config_path} serve")
    if generated:
        print(f"\nThe password of {address} (shown this once; change it with `postroom user passwd {address}`):"
              f"\n\n    {generated[0]}\n")
    print("")
    args.cfg = cfg
    args.domain = domain
    code = asyncio.run(with_store(cfg, lambda store: cmd_dns(args, store)))
    print(f"""
; What is left to you:
;  - publish the records above in the DNS of {domain}, and an A/AAAA record for {hostname} with reverse DNS
;    (PTR) naming {hostname} at your hosting provider;
;  - open the ports of the listeners in the firewall: {', '.join(str(p) for p in STANDARD_PORTS.values())};
;  - the TLS certificate is self-signed (clients warn) until you add to the configuration, once {hostname}
;    resolves to this machine:  [acme] directory = "https://acme-v02.api.letsencrypt.org/directory"
;    (the certificate then comes from Let's Encrypt by HTTP-01 on port 80, renewed on its own);
;  - mail clients set themselves up from the address {address} and its password (autoconfig, Autodiscover,
;    SRV records).""")
    return code


__all__ = ["STANDARD_PORTS", "SetupError", "config_text", "default_hostname", "run", "unit_text"]
