"""Configuration: one TOML file read into frozen dataclasses.

Every setting has a default, so `postroom serve` needs no file at all: it then listens on high ports on
127.0.0.1 and keeps SQLite and message files under ./postroom-data.

Invariants:
1. An unknown section or key, a value of the wrong type or out of range is a `ConfigError` whose message names
   the file, the dotted key and what is wrong. Nothing starts on a bad file.
2. Relative paths are made absolute when the config is loaded, so the running server never depends on a later
   `chdir`: paths in a file are relative to that file's folder (an admin command run from any directory finds
   the same data folder as the server), the defaults and overrides without a file to the current directory.
3. Where the file comes from is decided in one place, `discover`, in the order `DISCOVERY_ORDER` documents;
   `Config.source` names the file (or "<defaults>") so every message can say which configuration was used.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration file is unusable. The message is meant for the operator, as is."""


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"  # greetings and Received headers
    data_dir: str = "./postroom-data"
    shutdown_grace_seconds: float = 10.0  # SIGTERM: how long sessions may finish before they are cut
    # The asyncio event loop `postroom serve` runs on: "asyncio" (the standard library's), "uvloop" (libuv's;
    # refused at start when the uvloop package is not installed), or "auto" (uvloop when importable).
    event_loop: str = "asyncio"
    user: str = ""  # started as root: bind the ports, then run as this system user (process.py); "": stay
    workers: int = 0  # worker processes (workers.py): 0 one per CPU; 1 one process, no parent


EVENT_LOOPS = ("asyncio", "uvloop", "auto")
MAX_WORKERS = 256
LISTENER_NAMES = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https")
# Listeners whose sockets speak TLS from the first byte (implicit TLS, RFC 8314; `https`: RFC 2818).
IMPLICIT_TLS = frozenset({"submissions", "imaps", "pop3s", "https"})


@dataclass(frozen=True)
class ListenersConfig:
    smtp: str = "127.0.0.1:2525"
    submission: str = "127.0.0.1:2587"
    submissions: str = "127.0.0.1:2465"
    imap: str = "127.0.0.1:2143"
    imaps: str = "127.0.0.1:2993"
    pop3: str = "127.0.0.1:2110"
    pop3s: str = "127.0.0.1:2995"
    http: str = "127.0.0.1:8080"
    https: str = "127.0.0.1:8443"  # the web listener over TLS, with the mail listeners' certificate

    def enabled(self) -> dict[str, tuple[str, int]]:
        """Listener name -> (host, port) for every listener that is switched on."""
        out: dict[str, tuple[str, int]] = {}
        for name in LISTENER_NAMES:
            value = getattr(self, name)
            if value:
                out[name] = listen_address(value)
        return out


@dataclass(frozen=True)
class TLSConfig:
    cert: str = ""  # empty: a self-signed certificate is generated into data_dir
    key: str = ""


@dataclass(frozen=True)
class ACMEConfig:
    """Certificates from an ACME CA (RFC 8555) by the HTTP-01 challenge (postroom/acme.py)."""

    directory: str = ""  # the CA's directory URL; "" = off (tls.cert/tls.key or a self-signed certificate)
    email: str = ""  # contact address given to the CA (expiry notices); "" = none
    names: tuple[str, ...] = ()  # names on the certificate; empty: server.hostname
    ca_bundle: str = ""  # PEM file of the CAs that sign the directory's HTTPS certificate; "" = the system's


@dataclass(frozen=True)
class StoreConfig:
    url: str = ""  # empty: sqlite:///<data_dir>/postroom.db


@dataclass(frozen=True)
class AuthConfig:
    allow_plaintext: bool = False  # password logins without TLS: for tests and benchmarks only
    # Failed logins from one address (in `lockout_seconds`) answered without delay; after that every login
    # attempt from the address waits 1 s, doubling per further failure, at most `max_delay_seconds`.
    max_failures_per_ip: int = 3
    max_delay_seconds: float = 15.0
    # Failed logins for one user from one address (in `lockout_seconds`) before that pair alone is refused for
    # `lockout_seconds`; attempts while refused extend it, never past `max_lockout_seconds` from its start.
    max_failures_per_user: int = 5
    lockout_seconds: float = 300.0
    max_lockout_seconds: float = 3600.0
    # Addresses (CIDRs) whose logins are never delayed or refused for failures (an office NAT, a webmail
    # front end): their failures are logged but not counted.
    trusted_networks: tuple[str, ...] = ()
    # Successful password checks remembered this many seconds (like Dovecot's auth_cache_ttl), so a client
    # that reconnects often does not cost an argon2 check each time; 0: off. At most `cache_size` entries.
    cache_ttl: float = 300.0
    cache_size: int = 10000


@dataclass(frozen=True)
class LimitsConfig:
    message_size: int = 50 * 1024 * 1024  # bytes; SMTP SIZE, APPEND limit
    recipients: int = 100  # per message
    connections_per_ip: int = 20
    connections_total: int = 2000
    line_length: int = 8192  # bytes in one SMTP / POP3 command line (RFC 5321 §4.5.3.1.4 asks at least 512)
    imap_command_length: int = 65536  # bytes of one IMAP command's text, literals apart (like Dovecot's 64 KiB)
    literal_size: int = 50 * 1024 * 1024  # IMAP literal
    smtp_idle_seconds: float = 300.0  # RFC 5321 §4.5.3.2.7: at least 5 minutes
    imap_idle_seconds: float = 1800.0  # RFC 9051 §5.4: at least 30 minutes
    pop3_idle_seconds: float = 600.0  # RFC 1939 §3: at least 10 minutes
    errors_per_session: int = 20  # protocol errors before the server closes the session
    command_deadline_seconds: float = 60.0  # a command line must arrive whole this soon after its first byte; 0: off
    min_data_rate: float = 500.0  # bytes/s a DATA/BDAT body or IMAP literal must average after the grace; 0: off
    data_rate_grace_seconds: float = 10.0  # seconds of data before min_data_rate applies
    mime_depth: int = 50  # nested multipart / message levels parsed
    mime_parts: int = 5000  # parts parsed in one message


@dataclass(frozen=True)
class MTASTSConfig:
    """The MTA-STS policy (RFC 8461) served for every hosted domain (postroom/mtasts.py)."""

    mode: str = "testing"  # "testing", "enforce" or "none" (RFC 8461 §5)
    max_age_days: int = 7  # how long senders cache the policy


@dataclass(frozen=True)
class IMAPConfig:
    # QRESYNC (RFC 7162 §3.2.5): how long the UIDs of expunged messages are remembered, so a client that comes
    # back within this time is told exactly which of its messages went; after it, the RFC's fallback answers.
    expunged_retention_days: int = 30


@dataclass(frozen=True)
class POP3Config:
    login_delay_seconds: int = 0  # RFC 2449 §6.8 LOGIN-DELAY: 0 = no delay (not advertised); else enforced
    expire: str = ""  # RFC 2449 §6.7 EXPIRE: "" = not advertised, "never", or "0" (retrieved mail deleted at QUIT)


@dataclass(frozen=True)
class SMTPConfig:
    relay_networks: tuple[str, ...] = ()  # CIDRs whose clients may relay through the MX listener without AUTH
    vrfy_expn: bool = False  # VRFY/EXPN give real answers to authenticated clients (always 252/502 to others)
    max_received: int = 50  # more Received header fields than this: a mail loop, 554 5.4.6 (RFC 5321 §6.3)
    pop_before_smtp_minutes: float = 0.0  # a POP3/IMAP login lets that IP relay for this long; 0: off
    # Defence at the door (smtp/door.py)
    greet_delay_seconds: float = 6.0  # MX: a new client is greeted after this; talking first is refused; 0: off
    screen_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # no greeting delay, no rate limits on the MX
    client_connection_rate: int = 60  # MX connections per minute from one address; 0: no limit
    client_message_rate: int = 120  # MX messages (MAIL) per minute from one address; 0: no limit
    submission_messages_per_hour: int = 500  # per user; 0: no limit
    submission_recipients_per_hour: int = 2000  # per user; 0: no limit
    greylist_seconds: float = 0.0  # MX greylisting: a new (network, sender, recipient) waits this long; 0: off
    dnsbl_zones: tuple[str, ...] = ()  # DNS blocklists asked about MX clients (RFC 5782), e.g. "zen.spamhaus.org"
    dnsbl_timeout_seconds: float = 5.0  # per blocklist / reverse-DNS lookup; then: not listed / "unknown"
    reverse_dns: bool = True  # look up the forward-confirmed reverse DNS name of MX clients (Received, log)


@dataclass(frozen=True)
class DeliveryConfig:
    """Outbound delivery: the queue scheduler, routing and the SMTP client (postroom/delivery/queue.py)."""

    enabled: bool = True  # run the queue scheduler in `postroom serve`
    smarthost: str = ""  # "host:port": send every remote message there instead of to the MX hosts
    smarthost_user: str = ""  # AUTH at the smart host (only over TLS)
    smarthost_password: str = ""
    routes: dict[str, str] = field(default_factory=dict)  # domain -> "host[:port]", checked before DNS
    mx_port: int = 25  # port of the hosts found in DNS (tests and private networks change it)
    dns_servers: tuple[str, ...] = ()  # "ip" or "ip:port" resolvers; empty: the system's (/etc/resolv.conf)
    dns_cache_size: int = 10000  # answers kept by the one resolver (delivery, inbound checks, door); 0: none
    dns_cache_max_ttl_seconds: float = 3600.0  # no cached answer outlives this, whatever its TTL
    retry_seconds: tuple[float, ...] = (300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)  # last one repeats
    max_lifetime_seconds: float = 5 * 86400.0  # then a deferred recipient bounces (RFC 5321 §4.5.4.1)
    delay_notice_seconds: float = 4 * 3600.0  # a deferred recipient older than this gets one delay DSN; 0: none
    concurrency: int = 50  # simultaneous outbound connections in all
    concurrency_per_domain: int = 5  # simultaneous connections to one destination domain
    connect_timeout_seconds: float = 30.0
    command_timeout_seconds: float = 300.0  # RFC 5321 §4.5.3.2: at least 5 minutes for MAIL, RCPT, DATA
    starttls: bool = True  # use STARTTLS when offered (opportunistic, certificates not checked)
    poll_seconds: float = 1.0  # how often the scheduler looks for due work (admin commands, other nodes)
    messages_per_connection: int = 100  # then the connection is closed and a new one opened
    # Worker processes that run a queue scheduler, each with its share of the two concurrency limits
    # (delivery/queue.py invariant 10): 1 worker 0 only; 0 every worker. Measured on a loaded 2-vCPU VM, every
    # worker delivering drained no faster and relayed live slower on average (bench/RESULTS.md): 1 by default.
    workers: int = 1


@dataclass(frozen=True)
class QueueConfig:
    """The outbound queue's claims across processes and nodes (delivery/queue.py, store `queue_claim`)."""

    # A scheduler holds each recipient it attempts by a lease of this many seconds, renewed every third of it
    # while the attempt runs; a dead node's leases end after it and another node takes the recipients over.
    lease_seconds: float = 300.0


@dataclass(frozen=True)
class ScoreConfig:
    """The built-in spam score of MX mail (postroom/inbound/score.py): one weight per sign, summed. Weights are on
    SpamAssassin's scale (its default threshold is 5), each chosen so that no single sign a legitimate small
    sender may show (no SPF record, no DKIM, no reverse DNS) reaches the Junk threshold alone."""

    enabled: bool = True  # score MX mail (when the inbound checks run); false: no score, no Junk filing by it
    junk_threshold: float = 5.0  # a score over this: each recipient's Junk with $Junk (allow rules excepted)
    reject_threshold: float = 0.0  # > 0: a score over this is 550 5.7.1 at the end of DATA; 0: never
    spf_fail: float = 2.5  # the MAIL FROM domain says this host may not send for it (RFC 7208 §2.6.4)
    spf_softfail: float = 1.0  # "probably not authorized" (§2.6.5)
    spf_none: float = 0.5  # no SPF record (§2.6.1): common for small domains, so small
    spf_permerror: float = 0.5  # a broken record (§2.6.7)
    dkim_fail: float = 1.0  # a signature that does not verify (changed in transit, or forged; lists break some)
    dkim_none: float = 0.5  # no DKIM signature at all
    dmarc_fail: float = 2.0  # DMARC fail where the policy applied nothing (p=none, or pct left it out)
    dnsbl: float = 3.0  # per zone of dnsbl_zones that lists the client
    dnsbl_zones: tuple[str, ...] = ()  # blocklists that add to the score instead of refusing (smtp.dnsbl_zones)
    rdns_none: float = 1.0  # the client has no forward-confirmed reverse DNS name (smtp.reverse_dns)
    helo_not_fqdn: float = 1.0  # HELO/EHLO name without a dot (RFC 5321 §4.1.1.1 asks for the FQDN)
    helo_bare_ip: float = 2.0  # HELO/EHLO name is an IP address without brackets (RFC 5321 §4.1.3: a literal)


@dataclass(frozen=True)
class InboundConfig:
    """Sender authentication of mail arriving on the MX listener (postroom/inbound/): each check's result goes
    into the Authentication-Results field added to the message (RFC 8601) and into its log line."""

    spf: bool = True  # RFC 7208 check of the MAIL FROM and HELO identities
    dkim: bool = True  # RFC 6376 verification of every DKIM-Signature
    dmarc: bool = True  # RFC 7489 alignment and policy (needs spf and dkim)
    dmarc_reject: str = "reject"  # what p=reject does: "reject" (550 5.7.1 at the end of DATA) or "quarantine"
    arc: bool = True  # RFC 8617 verification of the ARC chain (Authentication-Results arc=)
    # ARC sealers (domains, the newest ARC-Seal's d=) trusted to report what the first hop saw: a DMARC failure of
    # a message whose chain passes, sealed by one of them, whose i=1 ARC-Authentication-Results says the From
    # domain passed, is delivered as if DMARC had passed (RFC 7489 §7.2 local policy; RFC 8617 §7.2).
    arc_trusted_sealers: tuple[str, ...] = ()
    dns_timeout_seconds: float = 5.0  # one DNS lookup of the checks, retries included; then temperror
    dmarc_reports: bool = False  # record DMARC results and send daily aggregate reports to rua (RFC 7489 §7.2)
    dmarc_report_from: str = ""  # the reports' sender address (needed when dmarc_reports is on)
    score: ScoreConfig = field(default_factory=ScoreConfig)  # [inbound.score]


@dataclass(frozen=True)
class WebConfig:
    """The webmail on the `http` and `https` listeners (postroom/web/mail.py, web/sessions.py)."""

    # Password sign-in over plain HTTP from anything but loopback: refused unless this is true (a TLS-terminating
    # proxy in front; otherwise the password crosses the network in clear text).
    allow_plain_http: bool = False
    session_idle_seconds: float = 1800.0  # a session unused this long is signed out
    session_max_seconds: float = 43200.0  # and any session this long after its sign-in, used or not
    page_size: int = 50  # messages on one page of the message list


@dataclass(frozen=True)
class RspamdConfig:
    """rspamd asked about each message on the MX listener (postroom/inbound/rspamd.py)."""

    url: str = ""  # "http://127.0.0.1:11333" (its normal worker); "": rspamd is not asked
    timeout_seconds: float = 15.0  # the whole exchange; past it the message is delivered unjudged
    # rspamd's controller worker ("http://127.0.0.1:11334"): users' moves into and out of Junk are recorded and
    # sent to its /learnspam and /learnham (inbound/learn.py); "": nothing is recorded or sent
    controller_url: str = ""
    controller_password: str = ""  # the controller's (enable_)password, sent as its Password header; a secret
    learn_days: int = 3  # a signal rspamd could not take for this long is dropped (with a log line)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    listeners: ListenersConfig = field(default_factory=ListenersConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    acme: ACMEConfig = field(default_factory=ACMEConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    mta_sts: MTASTSConfig = field(default_factory=MTASTSConfig)
    pop3: POP3Config = field(default_factory=POP3Config)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    web: WebConfig = field(default_factory=WebConfig)
    rspamd: RspamdConfig = field(default_factory=RspamdConfig)
    source: str = "<defaults>"  # where this came from, for messages

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_path / 'postroom.db'}"

    @property
    def cert_path(self) -> Path:
        if self.acme.directory:
            return self.data_path / "acme" / "cert.pem"
        return Path(self.tls.cert) if self.tls.cert else self.data_path / "tls" / "cert.pem"

    @property
    def key_path(self) -> Path:
        if self.acme.directory:
            return self.data_path / "acme" / "key.pem"
        return Path(self.tls.key) if self.tls.key else self.data_path / "tls" / "key.pem"

    @property
    def acme_names(self) -> tuple[str, ...]:
        """The names ACME certifies: `acme.names`, else the server's host name."""
        return self.acme.names or (self.server.hostname,)


def listen_address(value: str) -> tuple[str, int]:
    """A listener's address: `split_hostport`, and "*:25" -> ("", 25): every address of the machine, IPv4 and
    IPv6 (one socket per family). Raises ValueError."""
    if value.startswith("*:"):
        return "", split_hostport("0.0.0.0" + value[1:])[1]
    return split_hostport(value)


def parse_http_url(url: str) -> tuple[str, int, str]:
    """'http://127.0.0.1:11333' -> ('127.0.0.1', 11333, ''); raises ValueError for anything but an http URL
    with a host (rspamd's own HTTPCrypt is not spoken, nor TLS: rspamd is meant to listen on loopback)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// URL with a host")
    if parts.query or parts.fragment or parts.username:
        raise ValueError(f"{url!r}: no query, fragment or user name allowed")
    return parts.hostname, parts.port or 11333, parts.path.rstrip("/")


def split_hostport(value: str) -> tuple[str, int]:
    """'127.0.0.1:25' -> ('127.0.0.1', 25); '[::1]:25' -> ('::1', 25). Raises ValueError."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, port


# ---------------------------------------------------------------------------------------------------------
# Finding the file

ENV_VAR = "POSTROOM_CONFIG"
LOCAL_CONFIG = "postroom.toml"  # in the current directory
SYSTEM_CONFIG = "/etc/postroom/postroom.toml"
DISCOVERY_ORDER = (f"--config FILE, then ${ENV_VAR}, then ./{LOCAL_CONFIG}, then {SYSTEM_CONFIG}; "
                   "the first one given or found is used, else the built-in defaults (data in ./postroom-data)")


@dataclass(frozen=True)
class Discovery:
    """Which configuration file to use and how it was chosen.

    `path` is None when nothing was given or found (the defaults apply); `how` is one of "--config",
    "$POSTROOM_CONFIG", "./postroom.toml", the system path, or "defaults"; `looked` lists what was tried, in
    order, for messages such as "no store here; looked for a configuration in ..."."""

    path: Path | None
    how: str
    looked: tuple[str, ...]

    def describe(self) -> str:
        """'the configuration /x/postroom.toml (from $POSTROOM_CONFIG)' or 'the built-in defaults (no
        configuration found: looked for ...)'."""
        if self.path is not None:
            return f"the configuration {self.path} (from {self.how})"
        return f"the built-in defaults (no configuration found: looked for {', '.join(self.looked)})"


def discover(explicit: str | os.PathLike[str] | None = None, environ: typing.Mapping[str, str] | None = None,
             cwd: Path | None = None) -> Discovery:
    """The configuration file to use, in `DISCOVERY_ORDER`: `explicit` (the --config option), then the file named
    by $POSTROOM_CONFIG (`environ`, default os.environ), then ./postroom.toml in `cwd` (default the current
    directory), then /etc/postroom/postroom.toml (`SYSTEM_CONFIG`). A file named by --config or the variable is
    used even if it does not exist (`load` then says so); the other two only when they exist. Never raises."""
    env = os.environ if environ is None else environ
    looked: list[str] = []
    if explicit is not None and str(explicit) != "":
        return Discovery(Path(explicit), "--config", ("--config",))
    looked.append("--config")
    named = env.get(ENV_VAR, "")
    if named:
        return Discovery(Path(named), f"${ENV_VAR}", (*looked, f"${ENV_VAR}"))
    looked.append(f"${ENV_VAR} (not set)")
    local = (cwd if cwd is not None else Path.cwd()) / LOCAL_CONFIG
    looked.append(str(local))
    if local.is_file():
        return Discovery(local, f"./{LOCAL_CONFIG}", tuple(looked))
    looked.append(SYSTEM_CONFIG)
    if Path(SYSTEM_CONFIG).is_file():
        return Discovery(Path(SYSTEM_CONFIG), SYSTEM_CONFIG, tuple(looked))
    return Discovery(None, "defaults", tuple(looked))


# ---------------------------------------------------------------------------------------------------------
# Loading

def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None, how: str = "--config") -> Config:
    """Read `path` (None: defaults only), apply `overrides` (same shape as the TOML), validate.

    Relative paths in the file are taken relative to the file's folder (invariant 2). `how` names where the path
    came from ("--config", "$POSTROOM_CONFIG", ...: `Discovery.how`) for the message when the file is missing.
    Raises ConfigError."""
    where = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            way_out = (f"unset {how[1:]}" if how.startswith("$") else f"leave out {how}") + " to look elsewhere"
            raise ConfigError(f"{where}: no such file (named by {how}; write one, or {way_out})") from None
        except IsADirectoryError:
            raise ConfigError(f"{where}: is a folder, not a configuration file") from None
        except PermissionError:
            raise ConfigError(f"{where}: cannot be read (permission denied; run as the user the server runs as)") \
                from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:  # TOML is UTF-8 (TOML 1.0, "Spec")
            raise ConfigError(f"{where}: not valid TOML: not UTF-8 text (byte {exc.start})") from None
    if overrides:
        raw = merge(raw, overrides)
    cfg = _build(Config, raw, where, "")
    cfg = dataclasses.replace(cfg, source=where)
    _validate(cfg, where)
    return _absolutise(cfg, Path(path).expanduser().absolute().parent if path is not None else None)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, raw: Any, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{prefix.rstrip('.')}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = prefix + key
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key {dotted!r} (known here: {known})")
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, where, dotted + ".")
        else:
            kwargs[key] = _coerce(tp, value, where, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, dotted: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {dotted} must be a list of {_type_name(item_tp)}, not {value!r}")
        return tuple(_coerce(item_tp, v, where, f"{dotted}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{dotted}] must be a table of {_type_name(key_tp)} = "
                              f"{_type_name(value_tp)}, not {value!r}")
        return {_coerce(key_tp, k, where, f"{dotted}.{k!r}"): _coerce(value_tp, v, where, f'{dotted}."{k}"')
                for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: {dotted}: unsupported type")  # pragma: no cover - no such field yet
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {dotted} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {dotted} must be a whole number, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {dotted} must be a number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {dotted} must be a string, not {value!r}")
        return value
    raise ConfigError(f"{where}: {dotted}: unsupported type {tp!r}")  # pragma: no cover


def _validate(cfg: Config, where: str) -> None:
    if not cfg.server.hostname or any(c.isspace() for c in cfg.server.hostname):
        raise ConfigError(f"{where}: server.hostname must be a host name without spaces")
    if not cfg.server.data_dir:
        raise ConfigError(f"{where}: server.data_dir must not be empty")
    if cfg.server.user and (cfg.server.user != cfg.server.user.strip() or ":" in cfg.server.user):
        raise ConfigError(f"{where}: server.user must be a user name (or \"\" to keep the starting user)")
    if cfg.acme.directory:
        if not cfg.acme.directory.startswith("https://"):
            raise ConfigError(f"{where}: acme.directory must be an https:// URL (RFC 8555 §6.1), "
                              f"not {cfg.acme.directory!r}")
        if cfg.tls.cert or cfg.tls.key:
            raise ConfigError(f"{where}: acme.directory and tls.cert/tls.key are both set: the certificate comes "
                              "from one or the other (leave tls.cert and tls.key empty to use ACME)")
        if "http" not in cfg.listeners.enabled():
            raise ConfigError(f"{where}: acme.directory needs listeners.http: the CA checks the HTTP-01 challenge "
                              "there (on port 80 of every name)")
        for name in cfg.acme_names:
            if not name or "." not in name or any(c.isspace() or c in "/*:" for c in name):
                raise ConfigError(f"{where}: acme.names: {name!r} is not a public host name a CA can certify "
                                  "(set server.hostname or acme.names)")
    if not 0 <= cfg.server.workers <= MAX_WORKERS:
        raise ConfigError(f"{where}: server.workers must be 0 (one per CPU) to {MAX_WORKERS}, not {cfg.server.workers}")
    if cfg.server.event_loop not in EVENT_LOOPS:
        raise ConfigError(f"{where}: server.event_loop must be one of {', '.join(EVENT_LOOPS)}, "
                          f"not {cfg.server.event_loop!r}")
    if cfg.server.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError(f"{where}: server.event_loop = \"uvloop\" but the uvloop package is not installed "
                          "(pip install uvloop, or write \"auto\" to fall back to the standard loop)")
    seen: dict[tuple[str, int], str] = {}
    for name in LISTENER_NAMES:
        value = getattr(cfg.listeners, name)
        if not value:
            continue
        try:
            hp = listen_address(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: listeners.{name}: {exc} (write \"host:port\", \"*:port\" for every "
                              "address, or \"\" to disable)") from None
        if hp[1] != 0 and hp in seen:
            raise ConfigError(f"{where}: listeners.{name}: {value} is already used by listeners.{seen[hp]}")
        seen[hp] = name
    if bool(cfg.tls.cert) != bool(cfg.tls.key):
        raise ConfigError(f"{where}: tls.cert and tls.key must be given together (or both left empty)")
    url = cfg.store.url
    if url and not (url.startswith("sqlite:///") or url.startswith("postgresql://")):
        raise ConfigError(f"{where}: store.url must start with sqlite:/// or postgresql://, not {url!r}")
    if url.startswith("postgresql://"):
        check_postgresql_url(url, where)
    for name in ("message_size", "recipients", "connections_per_ip", "connections_total", "literal_size",
                 "errors_per_session", "mime_depth", "mime_parts"):
        if getattr(cfg.limits, name) < 1:
            raise ConfigError(f"{where}: limits.{name} must be at least 1")
    if cfg.limits.line_length < 1000:
        # RFC 5321 §4.5.3.1.6: a text line may be 1000 octets with CRLF; IMAP and POP3 need no less.
        raise ConfigError(f"{where}: limits.line_length must be at least 1000")
    if cfg.limits.imap_command_length < 8192:
        # RFC 7162 §4: servers SHOULD accept command lines of at least 8192 octets (clients keep below that).
        raise ConfigError(f"{where}: limits.imap_command_length must be at least 8192")
    for name in ("smtp_idle_seconds", "imap_idle_seconds", "pop3_idle_seconds"):
        if getattr(cfg.limits, name) <= 0:
            raise ConfigError(f"{where}: limits.{name} must be positive")
    for name in ("command_deadline_seconds", "min_data_rate", "data_rate_grace_seconds"):
        if getattr(cfg.limits, name) < 0:
            raise ConfigError(f"{where}: limits.{name} must be 0 (off) or more")
    for key in ("relay_networks", "screen_exempt"):
        for i, net in enumerate(getattr(cfg.smtp, key)):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"{where}: smtp.{key}[{i}]: {net!r} is not an address or network "
                                  f"(write \"192.0.2.0/24\" or \"2001:db8::1\")") from None
    for key in ("greet_delay_seconds", "greylist_seconds", "client_connection_rate", "client_message_rate",
                "submission_messages_per_hour", "submission_recipients_per_hour"):
        if getattr(cfg.smtp, key) < 0:
            raise ConfigError(f"{where}: smtp.{key} must be 0 (off) or more")
    for i, zone in enumerate(cfg.smtp.dnsbl_zones):
        if not zone.strip(".") or any(c.isspace() or c in "@/:[]" for c in zone) or len(zone) > 200:
            raise ConfigError(f"{where}: smtp.dnsbl_zones[{i}]: {zone!r} is not a DNS zone name")
    if cfg.inbound.dmarc_reports:
        sender = cfg.inbound.dmarc_report_from
        if sender.count("@") != 1 or not all(sender.split("@")) or any(c.isspace() or c in "<>," for c in sender):
            raise ConfigError(f"{where}: inbound.dmarc_reports needs inbound.dmarc_report_from, the reports' sender "
                              "address (e.g. \"dmarc-reports@example.org\", an address of a local domain)")
        if not cfg.inbound.dmarc:
            raise ConfigError(f"{where}: inbound.dmarc_reports needs inbound.dmarc on")
    score = cfg.inbound.score
    for f in dataclasses.fields(score):
        value = getattr(score, f.name)
        if isinstance(value, float) and value < 0:
            raise ConfigError(f"{where}: inbound.score.{f.name} must be 0 or more")
    if score.junk_threshold <= 0:
        raise ConfigError(f"{where}: inbound.score.junk_threshold must be positive")
    if score.reject_threshold and score.reject_threshold <= score.junk_threshold:
        raise ConfigError(f"{where}: inbound.score.reject_threshold must be over junk_threshold (or 0: off)")
    for i, zone in enumerate(score.dnsbl_zones):
        if not zone.strip(".") or any(c.isspace() or c in "@/:[]" for c in zone) or len(zone) > 200:
            raise ConfigError(f"{where}: inbound.score.dnsbl_zones[{i}]: {zone!r} is not a DNS zone name")
    if cfg.smtp.dnsbl_timeout_seconds <= 0:
        raise ConfigError(f"{where}: smtp.dnsbl_timeout_seconds must be positive")
    if cfg.smtp.greet_delay_seconds > 60:
        raise ConfigError(f"{where}: smtp.greet_delay_seconds must be at most 60 (clients wait 5 minutes for the "
                          "greeting, RFC 5321 §4.5.3.2.1, but a long delay only slows real mail)")
    if cfg.mta_sts.mode not in ("testing", "enforce", "none"):
        raise ConfigError(f"{where}: mta_sts.mode must be \"testing\", \"enforce\" or \"none\", "
                          f"not {cfg.mta_sts.mode!r}")
    if not 1 <= cfg.mta_sts.max_age_days <= 365:  # RFC 8461 §3.2: max_age at most 31557600 s
        raise ConfigError(f"{where}: mta_sts.max_age_days must be 1 to 365")
    if cfg.imap.expunged_retention_days < 1:
        raise ConfigError(f"{where}: imap.expunged_retention_days must be at least 1")
    for name in ("max_failures_per_ip", "max_failures_per_user"):
        if getattr(cfg.auth, name) < 1:
            raise ConfigError(f"{where}: auth.{name} must be at least 1")
    if cfg.auth.lockout_seconds <= 0 or cfg.auth.max_delay_seconds < 0:
        raise ConfigError(f"{where}: auth.lockout_seconds must be positive and auth.max_delay_seconds not negative")
    if cfg.auth.max_lockout_seconds < cfg.auth.lockout_seconds:
        raise ConfigError(f"{where}: auth.max_lockout_seconds must be at least auth.lockout_seconds")
    if cfg.auth.cache_ttl < 0 or cfg.auth.cache_size < 0:
        raise ConfigError(f"{where}: auth.cache_ttl and auth.cache_size must be 0 (off) or more")
    for i, net in enumerate(cfg.auth.trusted_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{where}: auth.trusted_networks[{i}]: {net!r} is not an address or network "
                              f"(write \"192.0.2.0/24\" or \"2001:db8::1\")") from None
    if cfg.smtp.max_received < 1:
        raise ConfigError(f"{where}: smtp.max_received must be at least 1")
    if cfg.smtp.pop_before_smtp_minutes < 0:
        raise ConfigError(f"{where}: smtp.pop_before_smtp_minutes must not be negative (0 switches it off)")
    _validate_delivery(cfg.delivery, where)
    if not 3 <= cfg.queue.lease_seconds <= 86400:
        raise ConfigError(f"{where}: queue.lease_seconds must be 3 to 86400 (a dead node's mail waits this long "
                          "before another node sends it; it is renewed every third of it)")
    if cfg.inbound.dmarc_reject not in ("reject", "quarantine"):
        raise ConfigError(f"{where}: inbound.dmarc_reject must be \"reject\" or \"quarantine\", "
                          f"not {cfg.inbound.dmarc_reject!r}")
    if cfg.inbound.dmarc and not (cfg.inbound.spf and cfg.inbound.dkim):
        # RFC 7489 §4.2: DMARC passes on an aligned SPF or DKIM pass; with one check off, mail that would pass
        # through it would fail and its owner's policy would be applied to it.
        raise ConfigError(f"{where}: inbound.dmarc needs inbound.spf and inbound.dkim on")
    for i, sealer in enumerate(cfg.inbound.arc_trusted_sealers):
        if not re.fullmatch(r"(?i)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+\.?", sealer):
            raise ConfigError(f"{where}: inbound.arc_trusted_sealers[{i}]: {sealer!r} is not a domain name "
                              f"(write \"lists.example.org\")")
    if cfg.inbound.arc_trusted_sealers and not (cfg.inbound.arc and cfg.inbound.dmarc):
        raise ConfigError(f"{where}: inbound.arc_trusted_sealers needs inbound.arc and inbound.dmarc on")
    if cfg.inbound.dns_timeout_seconds <= 0:
        raise ConfigError(f"{where}: inbound.dns_timeout_seconds must be positive")
    if cfg.web.session_idle_seconds <= 0 or cfg.web.session_max_seconds < cfg.web.session_idle_seconds:
        raise ConfigError(f"{where}: web.session_idle_seconds must be positive and web.session_max_seconds at least "
                          f"as long")
    if not 1 <= cfg.web.page_size <= 1000:
        raise ConfigError(f"{where}: web.page_size must be 1 to 1000")
    if cfg.rspamd.url:
        try:
            parse_http_url(cfg.rspamd.url)
        except ValueError as exc:
            raise ConfigError(f"{where}: rspamd.url: {exc} (write \"http://127.0.0.1:11333\")") from None
    if cfg.rspamd.controller_url:
        try:
            parse_http_url(cfg.rspamd.controller_url)
        except ValueError as exc:
            raise ConfigError(f"{where}: rspamd.controller_url: {exc} (write \"http://127.0.0.1:11334\")") from None
    if cfg.rspamd.learn_days < 1:
        raise ConfigError(f"{where}: rspamd.learn_days must be 1 or more")
    if cfg.rspamd.timeout_seconds <= 0:
        raise ConfigError(f"{where}: rspamd.timeout_seconds must be positive")
    if cfg.pop3.login_delay_seconds < 0:
        raise ConfigError(f"{where}: pop3.login_delay_seconds must be 0 (no delay) or more")
    if cfg.pop3.expire not in ("", "never", "0"):
        # Days-based expiry needs a retrieval timestamp per message and a sweeper; only what is true is offered.
        raise ConfigError(f"{where}: pop3.expire must be \"\" (not advertised), \"never\" or \"0\", "
                          f"not {cfg.pop3.expire!r}")


def _validate_delivery(d: DeliveryConfig, where: str) -> None:
    if d.smarthost:
        try:
            split_hostport(d.smarthost)
        except ValueError as exc:
            raise ConfigError(f"{where}: delivery.smarthost: {exc} (write \"host:port\", or \"\" for none)") from None
    if bool(d.smarthost_user) != bool(d.smarthost_password):
        raise ConfigError(f"{where}: delivery.smarthost_user and delivery.smarthost_password go together")
    if d.smarthost_user and not d.smarthost:
        raise ConfigError(f"{where}: delivery.smarthost_user is set but delivery.smarthost is empty")
    for domain, target in d.routes.items():
        if not domain or any(c.isspace() or c in "@:/" for c in domain):
            raise ConfigError(f"{where}: delivery.routes: {domain!r} is not a domain name")
        try:
            split_hostport(target if ":" in target.rsplit("]", 1)[-1] else f"{target}:25")
        except ValueError as exc:
            raise ConfigError(
                f"{where}: delivery.routes.\"{domain}\": {exc} (write \"host\" or \"host:port\")") from None
    for i, server in enumerate(d.dns_servers):
        host = server
        if server.count(":") == 1 or server.startswith("["):
            try:
                host, _ = split_hostport(server)
            except ValueError as exc:
                raise ConfigError(f"{where}: delivery.dns_servers[{i}]: {exc}") from None
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{where}: delivery.dns_servers[{i}]: {server!r} is not an IP address "
                              f"(write \"192.0.2.53\" or \"192.0.2.53:5353\")") from None
    if d.dns_cache_size < 0 or d.dns_cache_max_ttl_seconds <= 0:
        raise ConfigError(f"{where}: delivery.dns_cache_size must be 0 (no cache) or more and "
                          "delivery.dns_cache_max_ttl_seconds positive")
    if not 1 <= d.mx_port <= 65535:
        raise ConfigError(f"{where}: delivery.mx_port must be 1-65535")
    if not d.retry_seconds or any(s <= 0 for s in d.retry_seconds):
        raise ConfigError(f"{where}: delivery.retry_seconds must be a non-empty list of positive numbers")
    for name in ("max_lifetime_seconds", "connect_timeout_seconds", "command_timeout_seconds", "poll_seconds"):
        if getattr(d, name) <= 0:
            raise ConfigError(f"{where}: delivery.{name} must be positive")
    if d.delay_notice_seconds < 0:
        raise ConfigError(f"{where}: delivery.delay_notice_seconds must not be negative (0: no delay notices)")
    for name in ("concurrency", "concurrency_per_domain", "messages_per_connection"):
        if getattr(d, name) < 1:
            raise ConfigError(f"{where}: delivery.{name} must be at least 1")
    if d.workers < 0:
        raise ConfigError(f"{where}: delivery.workers must be 0 (every worker) or more")


def _absolutise(cfg: Config, base: Path | None) -> Config:
    """Every path absolute: relative ones against `base` (the file's folder) or, without a file, the current
    directory (invariant 2)."""

    def absolute(value: str) -> str:
        p = Path(value).expanduser()
        return str((p if p.is_absolute() or base is None else base / p).resolve())

    server = dataclasses.replace(cfg.server, data_dir=absolute(cfg.server.data_dir))
    tls = cfg.tls
    if tls.cert:
        tls = dataclasses.replace(tls, cert=absolute(tls.cert), key=absolute(tls.key))
    store = cfg.store
    if store.url.startswith("sqlite:///"):
        store = dataclasses.replace(store, url="sqlite:///" + absolute(store.url[len("sqlite:///"):]))
    acme = cfg.acme
    if acme.ca_bundle:
        acme = dataclasses.replace(acme, ca_bundle=absolute(acme.ca_bundle))
    return dataclasses.replace(cfg, server=server, tls=tls, store=store, acme=acme)


def check_postgresql_url(url: str, where: str = "store.url") -> None:
    """ConfigError unless `url` is "postgresql://[user[:password]@]host[:port]/database" (libpq's URI form, which
    asyncpg reads): a host and a database name are required, a port is a number."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: store.url: {exc}") from None
    database = parts.path.lstrip("/")
    if not parts.hostname or not database or "/" in database:
        raise ConfigError(f"{where}: store.url must be postgresql://user@host:port/database, not {url!r}")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{where}: store.url: port {port} is out of range")


def sqlite_path(url: str) -> Path:
    """sqlite:///path/to/db -> Path('/path/to/db') (absolute paths keep their leading slash)."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    return Path(url[len("sqlite:///"):])


SAMPLE = '''\
# Postroom configuration. Every key is optional; these are the defaults.
[server]
hostname = "localhost"            # used in greetings and Received headers
data_dir = "./postroom-data"      # SQLite database, message files, TLS certificate (relative: to this file)
shutdown_grace_seconds = 10       # SIGTERM: how long sessions may finish before they are cut
user = ""                         # started as root: bind the ports, then run as this system user
event_loop = "asyncio"            # "asyncio", "uvloop" (needs the uvloop package) or "auto" (uvloop if installed)
workers = 0                       # worker processes sharing the ports: 0 one per CPU, 1 a single process

[listeners]                        # "host:port"; "" disables a listener
smtp = "127.0.0.1:2525"            # MX: inbound from the world
submission = "127.0.0.1:2587"      # STARTTLS + AUTH
submissions = "127.0.0.1:2465"     # implicit TLS + AUTH
imap = "127.0.0.1:2143"
imaps = "127.0.0.1:2993"
pop3 = "127.0.0.1:2110"
pop3s = "127.0.0.1:2995"
http = "127.0.0.1:8080"            # webmail, health, metrics, client autoconfiguration
https = "127.0.0.1:8443"           # the same over TLS (the [tls] certificate)

[tls]                              # re-read by SIGHUP / postroom reload; the files must exist and parse
cert = ""                          # empty: a self-signed certificate is generated into data_dir
key = ""

[acme]                             # certificates from an ACME CA (Let's Encrypt) by HTTP-01 on the http listener
directory = ""                     # e.g. "https://acme-v02.api.letsencrypt.org/directory"; "" = off
email = ""                         # contact for the CA
names = []                         # names on the certificate; empty: server.hostname
ca_bundle = ""                     # CAs of the directory's own HTTPS certificate (a private CA); "": the system's

[store]
url = ""                           # empty: sqlite:///<data_dir>/postroom.db; or postgresql://user@host:port/db

[auth]
allow_plaintext = false            # true: password logins without TLS (tests and benchmarks only)
max_failures_per_ip = 3            # failures from an address before its logins are delayed (1 s, doubling)
max_delay_seconds = 15             # the longest such delay
max_failures_per_user = 5          # failures for a user from one address before that pair is refused
lockout_seconds = 300              # the window failures count in, and how long a pair is refused
max_lockout_seconds = 3600         # attempts while refused extend the refusal, never past this
trusted_networks = []              # e.g. ["192.0.2.0/24"]: never delayed or refused for failed logins
cache_ttl = 300                    # seconds a successful password check is remembered; 0: off
cache_size = 10000                 # remembered checks at most (least recently used dropped first)

[limits]
message_size = 52428800            # bytes
recipients = 100
connections_per_ip = 20
connections_total = 2000
line_length = 8192                 # SMTP and POP3 command lines
imap_command_length = 65536        # one IMAP command, literals apart
literal_size = 52428800
smtp_idle_seconds = 300
imap_idle_seconds = 1800
pop3_idle_seconds = 600
errors_per_session = 20
command_deadline_seconds = 60      # a command line (AUTH lines too) must arrive whole within this; 0: off
min_data_rate = 500                # bytes/s a DATA/BDAT body or IMAP literal must average after the grace; 0: off
data_rate_grace_seconds = 10
mime_depth = 50
mime_parts = 5000

[mta_sts]                          # RFC 8461 policy served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt
mode = "testing"                   # "testing", then "enforce" once the certificate is from a public CA; "none"
max_age_days = 7

[imap]
expunged_retention_days = 30       # QRESYNC: days the UIDs of expunged messages are kept for resyncing clients

[pop3]
login_delay_seconds = 0            # RFC 2449 LOGIN-DELAY: minimum seconds between logins of a user; 0: none
expire = ""                        # RFC 2449 EXPIRE: "" (not advertised), "never", or "0" (delete retrieved at QUIT)

[smtp]
relay_networks = []                # e.g. ["192.0.2.0/24"]: may relay through the MX listener without AUTH
vrfy_expn = false                  # true: VRFY/EXPN answer authenticated clients (others get 252/502)
max_received = 50                  # more Received headers than this is a mail loop (554 5.4.6)
pop_before_smtp_minutes = 0        # >0: a POP3/IMAP login lets that IP relay for this many minutes
greet_delay_seconds = 6            # MX: new clients are greeted after this; a client that talks first is refused
screen_exempt = ["127.0.0.0/8", "::1/128"]  # MX clients without greeting delay and rate limits
client_connection_rate = 60        # MX connections per minute from one address (0: no limit)
client_message_rate = 120          # MX messages per minute from one address (0: no limit)
submission_messages_per_hour = 500 # per user on submission (0: no limit)
submission_recipients_per_hour = 2000  # per user on submission (0: no limit)
greylist_seconds = 0               # >0: MX greylisting, a new (network, sender, recipient) is retried after this
dnsbl_zones = []                   # e.g. ["zen.spamhaus.org"]: MX clients listed there are refused at RCPT (554)
dnsbl_timeout_seconds = 5          # per blocklist or reverse-DNS lookup; a time-out means not listed
reverse_dns = true                 # record MX clients' forward-confirmed reverse DNS name (Received, log)

[delivery]
enabled = true                     # run the outbound queue in `postroom serve`
smarthost = ""                     # "host:port": relay all remote mail there instead of to MX hosts
smarthost_user = ""                # AUTH at the smart host (only after STARTTLS)
smarthost_password = ""
mx_port = 25                       # port of the MX hosts found in DNS
dns_servers = []                   # e.g. ["192.0.2.53"]; empty: the system resolver
dns_cache_size = 10000             # DNS answers cached for their TTL (delivery, inbound checks, door); 0: none
dns_cache_max_ttl_seconds = 3600   # no cached answer is kept longer than this
retry_seconds = [300, 900, 1800, 3600, 7200, 14400]   # waits between attempts; the last repeats
max_lifetime_seconds = 432000      # 5 days, then a deferred recipient bounces
delay_notice_seconds = 14400       # one delay notice after 4 hours; 0: none
concurrency = 50                   # outbound connections in all
concurrency_per_domain = 5         # outbound connections to one domain
connect_timeout_seconds = 30
command_timeout_seconds = 300
starttls = true                    # use STARTTLS when the peer offers it
poll_seconds = 1                   # how often the queue looks for due mail
messages_per_connection = 100
workers = 1                        # worker processes that deliver (their shares of the limits); 0: every one

[queue]
lease_seconds = 300                # a recipient in delivery is leased (renewed while sent); a dead node's wait

[web]
allow_plain_http = false           # true: password sign-in over plain HTTP from other hosts (behind a TLS proxy)
session_idle_seconds = 1800        # a webmail session unused this long is signed out
session_max_seconds = 43200        # every session ends this long after its sign-in
page_size = 50                     # messages per page of the message list

[delivery.routes]                  # static routes, checked before DNS: "domain" = "host[:port]"
# "partner.example" = "10.0.0.5:25"

[inbound]                          # sender authentication on the MX listener (Authentication-Results)
spf = true                         # RFC 7208: MAIL FROM and HELO
dkim = true                        # RFC 6376: every DKIM-Signature (RFC 8301 key sizes, RFC 8463 Ed25519)
dmarc = true                       # RFC 7489: needs spf and dkim
dmarc_reject = "reject"            # p=reject: "reject" (550 5.7.1) or "quarantine" (the recipient's Junk)
arc = true                         # RFC 8617: verify the ARC chain (arc= in Authentication-Results)
arc_trusted_sealers = []           # e.g. ["lists.example.org"]: their passing chains may override a DMARC failure
dns_timeout_seconds = 5            # per lookup; a time-out is temperror, never a refusal
dmarc_reports = false              # true: daily DMARC aggregate reports (RFC 7489 §7.2) to the domains' rua
dmarc_report_from = ""             # the reports' sender, e.g. "dmarc-reports@example.org" (needed when true)

[inbound.score]                    # the built-in spam score of MX mail: weights summed (docs/CONFIG.md: why each)
enabled = true
junk_threshold = 5.0               # over it: the recipients' Junk with $Junk
reject_threshold = 0.0             # > 0: over it, 550 5.7.1 at the end of DATA; 0: never
spf_fail = 2.5
spf_softfail = 1.0
spf_none = 0.5
spf_permerror = 0.5
dkim_fail = 1.0
dkim_none = 0.5
dmarc_fail = 2.0                   # a DMARC fail the policy let through (p=none, pct)
dnsbl = 3.0                        # per listing in one of dnsbl_zones
dnsbl_zones = []                   # blocklists that add to the score instead of refusing
rdns_none = 1.0                    # no forward-confirmed reverse DNS (smtp.reverse_dns)
helo_not_fqdn = 1.0
helo_bare_ip = 2.0

[rspamd]                           # spam filtering of MX mail by rspamd's HTTP protocol (/checkv2)
url = ""                           # e.g. "http://127.0.0.1:11333"; "": off
timeout_seconds = 15               # then the message is delivered unjudged (and the log says so)
controller_url = ""                # e.g. "http://127.0.0.1:11334": learn from users' moves into/out of Junk
controller_password = ""           # the controller's password (a secret: never logged)
learn_days = 3                     # a training signal rspamd cannot take for this long is dropped
'''
