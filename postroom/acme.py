"""Certificates from an ACME CA (RFC 8555) by the HTTP-01 challenge, renewed and swapped in without a restart.

Theory of operation
-------------------
With `acme.directory` set, the listeners' certificate is `data_dir/acme/cert.pem` (key `key.pem`). At the first
start there is none: `net/tls.py` writes a self-signed one there as it would anyway, the listeners start with it,
and `CertificateManager.run` (a task of `postroom serve`) obtains a real one at once:

1. the account: an RSA 2048 key made once (`acme/account-key.pem`, 0600) and registered with the CA, terms of
   service agreed (RFC 8555 §7.3; the account URL is kept in `acme/account.json`);
2. a new order for `Config.acme_names` with a CSR for a new ECDSA P-256 key; for each authorization the HTTP-01
   challenge (RFC 8555 §8.3): the key authorization is put in `challenges` under its token, where the web
   listener serves it at `/.well-known/acme-challenge/TOKEN` (web/app.py), and the CA is told to check;
3. poll until the order is valid, finalize, download the full chain; install key and chain as a pair
   (`install_steps`, below; key 0600) and load them into the one server `SSLContext` every listener uses
   (`load_cert_chain` on the same object: handshakes from then on get the new certificate, open sessions keep
   theirs). A reload (SIGHUP) makes a new context from the files and hands it, with the new configuration, to
   the manager (`app.Postroom.reload`).

The `acme` library (certbot's, with `josepy` for JOSE) is synchronous (requests), so every call to the CA runs in
a thread (`asyncio.to_thread`); `challenges` is a plain dict the thread writes and the loop reads.

Renewal: a certificate is due at two thirds of its lifetime (Let's Encrypt's advice: 60 of 90 days), or at once
when it is self-signed or does not carry every configured name. The task sleeps until then (at most an hour, so a
changed clock or configuration is noticed); after a failure it retries after 5 minutes, doubling to 6 hours,
logging each failure with the CA's reason. One log line per certificate obtained.

Installing a pair. Two files cannot be replaced by one rename, so the new pair is staged beside the old one and
a crash at any point is finished (or undone) by `settle_pair`, which every load of the ACME files runs first
(`app.load_tls`, and `obtain` itself). The steps, each durable (file fsync'd, then the folder) before the next:

    1. `key.pem.new` written (temporary file, fsync, rename)
    2. `cert.pem.new` written likewise: the pair is now staged
    3. `key.pem.new` renamed over `key.pem`
    4. `cert.pem.new` renamed over `cert.pem`

What `settle_pair` finds after a crash, and does: only `key.pem.new` (crash in 1-2): the staging was not
complete, the old pair is in place: remove it. Both `.new` files (after 2): finish with steps 3 and 4.
Only `cert.pem.new` (after 3: the new key is in place, its chain not yet): finish with step 4, since
`cert.pem.new` exists only once its key was staged. Neither: nothing to do. In every case the pair loaded
matches (tests/unit/test_acme_install.py kills a process after each step and loads what it left).

The account key is made before the account is registered and `account.json` written after: a crash between
leaves a key without its URL, and the next run registers it again, which the CA answers with the existing
account (RFC 8555 §7.3.1, handled in `_client`).

Invariants
1. The private key of a certificate is never readable by others (0600 from creation); after any crash, the key
   and certificate loaded (after `settle_pair`) are the old pair or the new, never a mix.
2. `challenges` holds only tokens of orders in progress (removed when the order ends, valid or not).
3. A failure to obtain a certificate never stops the server: the listeners keep the certificate they have.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import ssl
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from postroom.config import Config

log = logging.getLogger("postroom.acme")

RENEW_FRACTION = 2 / 3  # of the lifetime: renew then
MAX_SLEEP = 3600.0  # seconds between looks at the certificate
RETRY_FIRST, RETRY_MAX = 300.0, 6 * 3600.0  # after a failure: 5 minutes, doubling to 6 hours
ORDER_SECONDS = 180  # how long one order may take (challenges checked, certificate issued)


@dataclass(frozen=True, slots=True)
class CertState:
    """What the current certificate is: its names, validity (UTC datetimes), and whether it is self-signed."""

    names: frozenset[str]
    not_before: datetime.datetime
    not_after: datetime.datetime
    self_signed: bool


def read_state(cert_path: Path) -> CertState | None:
    """The state of the PEM certificate at `cert_path` (its first certificate); None if missing or unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return CertState(names, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.issuer == cert.subject)


def renewal_time(state: CertState | None, names: Sequence[str]) -> datetime.datetime | None:
    """When the certificate must be replaced: None = now (missing, self-signed, or without a wanted name),
    else at `RENEW_FRACTION` of its lifetime."""
    if state is None or state.self_signed or not {n.lower() for n in names} <= state.names:
        return None
    return state.not_before + (state.not_after - state.not_before) * RENEW_FRACTION


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` by rename, the file created with `mode` from its first byte (invariant 1)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


NEW = ".new"  # the suffix of a staged file (module doc, "Installing a pair")


def _staged(path: Path) -> Path:
    return path.with_name(path.name + NEW)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_steps(cert_path: Path, key_path: Path, key_pem: bytes, chain_pem: bytes) -> Iterator[int]:
    """Install a new key and certificate chain as a pair (module doc, "Installing a pair"): a generator that
    does the four steps in order and yields each one's number (1-4) once it is durable, so a test can end the
    process between steps. `install_pair` runs it through. Raises OSError (the old pair stays in place, or the
    new one is staged for `settle_pair`)."""
    directory = key_path.parent
    _write_private(_staged(key_path), key_pem, 0o600)
    _fsync_dir(directory)
    yield 1
    _write_private(_staged(cert_path), chain_pem, 0o644)
    _fsync_dir(cert_path.parent)
    yield 2
    os.replace(_staged(key_path), key_path)
    _fsync_dir(directory)
    yield 3
    os.replace(_staged(cert_path), cert_path)
    _fsync_dir(cert_path.parent)
    yield 4


def install_pair(cert_path: Path, key_path: Path, key_pem: bytes, chain_pem: bytes) -> None:
    """`install_steps` run to the end: the new pair is in place. Raises OSError."""
    for _ in install_steps(cert_path, key_path, key_pem, chain_pem):
        pass


def settle_pair(cert_path: Path, key_path: Path) -> str:
    """Finish or undo an installation a crash interrupted (module doc): afterwards no staged file is left and
    `cert_path` / `key_path` are a matching pair (if they were before the installation began). Returns what was
    done: "" (nothing), "undone" or "finished". Raises OSError."""
    new_key, new_cert = _staged(key_path), _staged(cert_path)
    if new_cert.exists():
        if new_key.exists():  # crash after step 2: steps 3 and 4 remain
            os.replace(new_key, key_path)
            _fsync_dir(key_path.parent)
        os.replace(new_cert, cert_path)  # after step 3: step 4 remains
        _fsync_dir(cert_path.parent)
        log.warning("acme found an interrupted certificate installation and finished it path=%s", cert_path)
        return "finished"
    if new_key.exists():  # crash in step 1 or 2: the staging is incomplete and the old pair in place
        new_key.unlink()
        _fsync_dir(key_path.parent)
        log.warning("acme found an interrupted certificate installation and undid it path=%s", key_path)
        return "undone"
    return ""


class CertificateManager:
    """Obtains and renews the listeners' certificate from `cfg.acme.directory` (module essay).

    `challenges` maps HTTP-01 tokens to key authorizations for the web listener; `context` is the server
    SSLContext every listener shares (None in tests that only want the files)."""

    def __init__(self, cfg: Config, context: ssl.SSLContext | None) -> None:
        self.cfg = cfg
        self.context = context
        self.more_contexts: list[ssl.SSLContext] = []  # other listeners' contexts to load it into (https)
        self.challenges: MutableMapping[str, str] = {}  # workers.ChallengeFiles with several worker processes
        self.dir = cfg.data_path / "acme"
        self.issued = asyncio.Event()  # set after each certificate obtained (tests and `run` callers wait on it)
        self.on_obtained: Callable[[], None] | None = None  # after each certificate: worker 0 reloads the others

    # ---- the loop ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep a valid certificate until cancelled (invariant 3)."""
        retry = RETRY_FIRST
        while True:
            due = renewal_time(read_state(self.cfg.cert_path), self.cfg.acme_names)
            now = datetime.datetime.now(datetime.UTC)
            if due is not None and due > now:
                await asyncio.sleep(min(MAX_SLEEP, (due - now).total_seconds()))
                continue
            try:
                await self.obtain()
                retry = RETRY_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("acme failed names=%s error=%r retry_in=%ds (the listeners keep their certificate)",
                            ",".join(self.cfg.acme_names), _reason(exc), int(retry))
                await asyncio.sleep(retry)
                retry = min(RETRY_MAX, retry * 2)

    async def obtain(self) -> CertState:
        """One certificate for the configured names, written and loaded. Raises on any failure (the CA's
        problem document in the message), leaving the current certificate in place."""
        key_pem, chain_pem = await asyncio.to_thread(self._order)
        await asyncio.to_thread(settle_pair, self.cfg.cert_path, self.cfg.key_path)  # a crash's leftovers first
        await asyncio.to_thread(install_pair, self.cfg.cert_path, self.cfg.key_path, key_pem, chain_pem)
        for context in (self.context, *self.more_contexts):
            if context is not None:
                context.load_cert_chain(self.cfg.cert_path, self.cfg.key_path)
        state = read_state(self.cfg.cert_path)
        assert state is not None
        due = renewal_time(state, self.cfg.acme_names)
        log.info("acme certificate obtained names=%s not_after=%s renew_at=%s", ",".join(sorted(state.names)),
                 state.not_after.isoformat(timespec="seconds"), due.isoformat(timespec="seconds") if due else "now")
        self.issued.set()
        if self.on_obtained is not None:
            self.on_obtained()
        return state

    # ---- the protocol (in a thread) ------------------------------------------------------------------------
    def _client(self) -> Any:
        from acme import client, errors, messages
        from josepy.jwk import JWKRSA

        key_path = self.dir / "account-key.pem"
        if key_path.exists():
            account_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        else:
            account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_private(key_path, account_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
        assert isinstance(account_key, rsa.RSAPrivateKey)
        verify: Any = self.cfg.acme.ca_bundle or True  # requests takes a CA file path in place of True
        net = client.ClientNetwork(JWKRSA(key=account_key), user_agent="postroom", verify_ssl=verify)
        directory = client.ClientV2.get_directory(self.cfg.acme.directory, net)
        acme = client.ClientV2(directory, net=net)
        account_path = self.dir / "account.json"
        saved = None
        if account_path.exists():
            try:
                saved = json.loads(account_path.read_text())
            except ValueError:
                saved = None
        if saved is not None and saved.get("directory") == self.cfg.acme.directory:
            net.account = messages.RegistrationResource.json_loads(json.dumps(saved["account"]))
            return acme
        email = self.cfg.acme.email or None
        try:
            regr = acme.new_account(messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True))
        except errors.ConflictError as exc:  # RFC 8555 §7.3.1: the key already has an account there
            regr = acme.query_registration(messages.RegistrationResource(uri=exc.location,
                                                                         body=messages.Registration()))
        _write_private(account_path, json.dumps({"directory": self.cfg.acme.directory,
                                                 "account": json.loads(regr.json_dumps())}).encode(), 0o600)
        net.account = regr
        return acme

    def _order(self) -> tuple[bytes, bytes]:
        from acme import challenges, crypto_util, messages

        acme = self._client()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        names = list(dict.fromkeys(n.lower() for n in self.cfg.acme_names))
        order = acme.new_order(crypto_util.make_csr(key_pem, names))
        tokens: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # RFC 8555 §7.1.4: a CA may reuse a valid authorization (Let's Encrypt does, 30 days)
                http01 = [c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)]
                if not http01:
                    raise RuntimeError(f"the CA offers no HTTP-01 challenge for {authz.body.identifier.value}")
                chall = http01[0]
                response, validation = chall.response_and_validation(acme.net.key)
                token = chall.chall.encode("token")
                self.challenges[token] = validation
                tokens.append(token)
                acme.answer_challenge(chall, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_SECONDS)
            done = acme.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:  # invariant 2
                self.challenges.pop(token, None)
        return key_pem, done.fullchain_pem.encode()


def _reason(exc: Exception) -> str:
    """A one-line reason: the CA's problem detail when there is one (RFC 8555 §6.7)."""
    detail = getattr(exc, "detail", None) or getattr(exc, "description", None)
    text = f"{type(exc).__name__}: {detail or exc}"
    return " ".join(text.split())[:500]


__all__ = ["CertState", "CertificateManager", "read_state", "renewal_time"]
