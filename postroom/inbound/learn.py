"""Teaching rspamd from users' verdicts: their moves into and out of Junk, sent to its controller (issue 12 item 8).

Theory of operation
-------------------
**Recording.** With `rspamd.controller_url` set, the store records a training signal in the same transaction as
the user's act (`Store.training_signals`, store/sqlite/senders.py invariant 4): an IMAP COPY or MOVE, or the
webmail's move, into the user's Junk mailbox, or `$Junk` added by STORE (what Thunderbird's "mark as junk"
sends), is "spam"; a move out of Junk into any mailbox but Trash is "ham". So a signal is as durable as the
move: a crash right after the move's OK cannot lose it, and no signal exists for a move that did not commit.
(A change-feed subscriber would have been simpler to wire, but one that was not running, or fell behind the
feed's pruning, would lose signals silently.) The server's own filing into Junk (DMARC, the score, rspamd)
records nothing: a filter must not be taught its own verdicts.

**Sending.** `Learner` (one task of `postroom serve`) claims the due signals every `POLL_SECONDS` and POSTs each
message, as stored, to `<controller_url>/learnspam` or `/learnham` (rspamd's controller protocol, HTTP/1.0, one
connection per message) with the `Password` header set to `rspamd.controller_password`. rspamd answers 200
(learnt) or 208 ("already learned", e.g. the same message moved twice): both end the signal. Anything else
(rspamd down, slow past `rspamd.timeout_seconds`, 401 for a wrong password, 5xx) is retried with backoff
(`RETRY_FIRST` doubled per attempt, at most `RETRY_MAX`); a signal older than `rspamd.learn_days` days is dropped
with a log line, as is one rspamd refuses for its content (400: e.g. too few words to learn from) and one whose
message was deleted meanwhile. Every outcome is one `learn` log line (result, kind, user id, attempts, reason);
the password never appears in a log line or an error.

**Once across nodes.** With worker processes one worker sends (`sending`); with several nodes on one store
(docs/SCALING.md) the sender of the node that holds the cluster-wide lease `rspamd-learn` (jobs.py) does. And
the signals a round sends are claimed in the store (`Store.claim_training_signals`: made due again only after
`claim_seconds`, in the transaction that reads them), so two senders at once (a node whose lease ran out while
it was sending) never send one signal both. A sender that dies mid-round leaves its signals to come due when the
claim runs out: one may be sent again, and rspamd answers 208 for a message it learnt already.

Invariants
1. A signal leaves the store only after rspamd said 200 or 208, or when it is dropped (too old, refused for
   its content, message gone), each with its log line; and only the verdict that was sent: a newer one on the
   same message, recorded while it was sent, stays (`created` passed to `finish_training_signal`).
2. The message goes out in pieces of at most `CHUNK` bytes; the controller's reply is read up to `MAX_REPLY`.
3. A failure of one signal, or of a whole round, never stops the task; `stop()` cancels it and waits.
4. A round sends only signals it claimed, and its claim outlasts the round: `claim_seconds` is longer than
   `BATCH` sends that each take their full `rspamd.timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from postroom.config import RspamdConfig, parse_http_url
from postroom.jobs import ClusterJob
from postroom.net.listener import logfmt
from postroom.store.api import NotFound, Store, TrainingSignal

log = logging.getLogger("postroom.inbound.learn")

POLL_SECONDS = 2.0
BATCH = 20  # signals sent per round, one after the other (rspamd's controller learns one at a time anyway)
RETRY_FIRST = 60.0  # seconds before the first retry; doubled per failed attempt
RETRY_MAX = 3600.0
DAY = 86400.0
CHUNK = 1 << 20
MAX_REPLY = 64 * 1024
ENDPOINTS = {"spam": "/learnspam", "ham": "/learnham"}


class LearnError(Exception):
    """The controller could not be asked, or its reply is not HTTP."""


async def post(url: str, password: str, endpoint: str, message: bytes, timeout: float) -> tuple[int, str]:
    """POST `message` to the controller at `url` + `endpoint`; returns (HTTP status, the reply's "error" text or
    ""). Raises LearnError, OSError or TimeoutError when there is no HTTP answer within `timeout` seconds."""
    host, port, prefix = parse_http_url(url)

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = [f"POST {prefix}{endpoint} HTTP/1.0", f"Content-Length: {len(message)}"]
            if password:
                head.append(f"Password: {password}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            for i in range(0, len(message), CHUNK):  # invariant 2
                writer.write(message[i:i + CHUNK])
                await writer.drain()
            reply = b""
            while len(reply) <= MAX_REPLY and (more := await reader.read(MAX_REPLY + 1 - len(reply))):
                reply += more
            return reply
        finally:
            writer.close()

    reply = await asyncio.wait_for(exchange(), timeout)
    head, _, body = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
        raise LearnError("reply is not HTTP")
    error = ""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            error = data["error"][:200]
    except ValueError:
        pass
    return int(status[1]), error


class Learner:
    """Sends the store's training signals to rspamd's controller (module doc). `cfg`: the `[rspamd]` settings;
    `clock`: seconds since the epoch (tests pass their own); `sending` False: only record (a worker process
    other than the one that sends); `job`: the cluster-wide lease a round takes first (None: no other node)."""

    def __init__(self, store: Store, cfg: RspamdConfig, clock: Callable[[], float] = time.time,
                 poll: float = POLL_SECONDS, *, sending: bool = True, job: ClusterJob | None = None) -> None:
        self.store = store
        self.job = job
        self.cfg = cfg
        self.clock = clock
        self.poll = poll
        # With worker processes every worker records (a move can happen in any of them) and one sends: two
        # senders would read the same due rows and teach rspamd twice.
        self.sending = sending
        self._task: asyncio.Task[None] | None = None

    def configure(self, cfg: RspamdConfig) -> None:
        """Use `cfg` from now on (a reload): recording and sending start or stop with `controller_url`."""
        self.cfg = cfg
        self.store.training_signals = bool(cfg.controller_url)
        if cfg.controller_url and self._task is None and self.sending:
            self._task = asyncio.create_task(self._loop(), name="rspamd-learn")
        elif not cfg.controller_url and self._task is not None:
            task, self._task = self._task, None
            task.cancel()

    def start(self) -> None:
        self.configure(self.cfg)

    async def stop(self) -> None:
        self.store.training_signals = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.job is not None:
            await self.job.release()

    @property
    def claim_seconds(self) -> float:
        """How long a round's claim on its signals lasts (invariant 4): every send of the round at its timeout."""
        return BATCH * (self.cfg.timeout_seconds + 1.0) + 60.0

    async def run_once(self) -> int:
        """One round: claim the due signals (at most `BATCH`) and send them; returns how many were handled."""
        due = await self.store.claim_training_signals(self.clock(), BATCH, self.claim_seconds)
        for signal in due:
            await self._send(signal)
        return len(due)

    async def _loop(self) -> None:
        while True:
            try:
                handled = await (self.job.run(self.run_once) if self.job is not None else self.run_once())
                if handled == BATCH:
                    continue  # more are due: no pause
            except Exception:  # invariant 3
                log.exception("learn: a round failed")
            await asyncio.sleep(self.poll)

    def _log(self, signal: TrainingSignal, result: str, reason: str = "", level: int = logging.INFO) -> None:
        fields: list[tuple[str, object]] = [("result", result), ("kind", signal.kind), ("user_id", signal.user_id),
                                            ("body", signal.blob_id[:16]), ("attempts", signal.attempts + 1)]
        if reason:
            fields.append(("reason", reason))
        log.log(level, "%s", logfmt("learn", fields))

    async def _send(self, signal: TrainingSignal) -> None:
        now = self.clock()
        try:
            message = await self.store.read_message(signal.blob_id)
        except (NotFound, FileNotFoundError):
            self._log(signal, "dropped", "message deleted before it was sent")
            await self.store.finish_training_signal(signal.id, created=signal.created)
            return
        try:
            status, error = await post(self.cfg.controller_url, self.cfg.controller_password,
                                       ENDPOINTS[signal.kind], message, self.cfg.timeout_seconds)
        except (OSError, TimeoutError, LearnError, ValueError) as exc:
            status, error = 0, str(exc) or type(exc).__name__
        if status in (200, 208):  # invariant 1: learnt, or learnt before
            self._log(signal, "learned" if status == 200 else "already-learned")
            await self.store.finish_training_signal(signal.id, created=signal.created)
            return
        if status == 400:  # rspamd refuses the content itself (too few tokens, ...): retrying cannot help
            self._log(signal, "dropped", f"refused by rspamd: {error}", logging.WARNING)
            await self.store.finish_training_signal(signal.id, created=signal.created)
            return
        reason = f"HTTP {status}: {error}" if status else error
        if now - signal.created > self.cfg.learn_days * DAY:
            self._log(signal, "dropped", f"still failing after {self.cfg.learn_days} days: {reason}", logging.WARNING)
            await self.store.finish_training_signal(signal.id, created=signal.created)
            return
        wait = min(RETRY_FIRST * 2 ** signal.attempts, RETRY_MAX)
        self._log(signal, "retry", f"{reason}; next in {wait:.0f} s", logging.WARNING)
        await self.store.finish_training_signal(signal.id, retry_at=now + wait, created=signal.created)
