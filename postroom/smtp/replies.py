"""SMTP replies: a code, an enhanced status code (RFC 3463) and text, and the ones Postroom sends, by name.

Theory of operation
-------------------
Every reply the server sends is a `Reply`. Handlers raise `SMTPError(reply)`; only the session's dispatcher
turns it into bytes (STYLE habit 4). Names follow the wire: `R550_5_1_1_NO_SUCH_USER` is "550 5.1.1".

The `Reply` type itself is `smtp/syntax.py`'s (the outbound client reads the same type).

Invariants
1. Every reply carries an enhanced status code (RFC 2034 §3), except the 220 greeting and the replies to
   HELO/EHLO, which RFC 2034 §3 exempts (their first word must be the server's domain, and EHLO lines are
   keywords a client parses).
2. The enhanced code's class digit equals the reply code's first digit (RFC 3463 §2; checked by `Reply`).
3. Reply text is ASCII without CR or LF; a multi-line reply is rendered `250-...` / `250 ...` (RFC 5321 §4.2.1).
"""

from __future__ import annotations

from .syntax import Reply as Reply  # re-exported: handlers build replies from this module


def reply(code: int, esc: str, *lines: str) -> Reply:
    """A Reply from its code, enhanced code and lines (one empty line when none is given)."""
    return Reply(code, esc, tuple(lines) if lines else ("",))


class SMTPError(Exception):
    """A command failed with this reply. Raised by handlers; the dispatcher sends it (and counts it)."""

    def __init__(self, r: Reply) -> None:
        super().__init__(str(r))
        self.reply = r


# --- 2xx -------------------------------------------------------------------------------------------------
R221_BYE = reply(221, "2.0.0", "Bye")
R235_AUTH_OK = reply(235, "2.7.0", "Authentication successful")  # RFC 4954 §6
R250_OK = reply(250, "2.0.0", "OK")
R250_SENDER_OK = reply(250, "2.1.0", "Sender OK")
R250_RCPT_OK = reply(250, "2.1.5", "Recipient OK")
R250_RESET = reply(250, "2.0.0", "Reset OK")
R252_CANNOT_VRFY = reply(252, "2.5.0", "Cannot VRFY user, but will accept the message and attempt delivery")
R214_HELP = reply(214, "2.0.0",
                  "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN HELP STARTTLS AUTH",
                  "See RFC 5321; mail to postmaster for help with this server")
R220_READY_TLS = reply(220, "2.0.0", "Ready to start TLS")
R354_DATA = reply(354, "", "End data with <CR><LF>.<CR><LF>")

# --- 4xx -------------------------------------------------------------------------------------------------
R421_SHUTDOWN = reply(421, "4.3.2", "Service shutting down, closing connection")
R421_TIMEOUT = reply(421, "4.4.2", "Idle timeout, closing connection")
R421_SLOW_COMMAND = reply(421, "4.4.2", "Command not received in time, closing connection")  # net invariant 7
R421_SLOW_DATA = reply(421, "4.4.2", "Data arriving too slowly, closing connection")  # net invariant 7
R421_TOO_MANY_ERRORS = reply(421, "4.7.0", "Too many errors, closing connection")
R421_TLS_PIPELINED = reply(421, "4.7.0", "Plaintext pipelined after STARTTLS, closing connection")
R451_LOCAL_ERROR = reply(451, "4.3.0", "Local error in processing, try again later")
# The store cannot be reached now (StoreUnavailable): RFC 5321 §4.2.1 451 "local error in processing", the sender
# keeps the message and retries; RFC 3463 §3.4 X.3.0 "other or undefined mail system status".
R451_STORE_UNAVAILABLE = reply(451, "4.3.0", "Mail store unavailable, try again later")
# Defence at the door (door.py): temporary, so a real server or client tries again later (RFC 5321 §4.2.1)
R421_CONNECTION_RATE = reply(421, "4.7.0", "Too many connections from your address; try again later")
R450_MESSAGE_RATE = reply(450, "4.7.1", "Too many messages from your address; try again later")
R450_USER_MESSAGES = reply(450, "4.7.1", "Hourly limit of messages for your account reached; try again later")
R450_USER_RECIPIENTS = reply(450, "4.7.1", "Hourly limit of recipients for your account reached; try again later")


def greylisted(wait: float) -> Reply:
    """450 4.7.1 for a greylisted triplet (door.py): try again after `wait` seconds."""
    return reply(450, "4.7.1", f"Greylisted, please try again in {max(1, int(wait + 0.999))} seconds")
R452_TOO_MANY_RCPTS = reply(452, "4.5.3", "Too many recipients")  # RFC 5321 §4.5.3.1.10
R452_NO_STORAGE = reply(452, "4.3.1", "Insufficient system storage, try again later")  # RFC 3463 §3.4, RFC 5321 §4.2.2
R454_TLS_UNAVAILABLE = reply(454, "4.7.0", "TLS not available")
R454_AUTH_TEMP = reply(454, "4.7.0", "Temporary authentication failure")

# --- 5xx -------------------------------------------------------------------------------------------------
R500_UNKNOWN = reply(500, "5.5.2", "Command not recognized")
R500_LINE_TOO_LONG = reply(500, "5.5.2", "Line too long")  # RFC 5321 §4.5.3.1.4
R500_AUTH_LINE_TOO_LONG = reply(500, "5.5.6", "Authentication exchange line is too long")  # RFC 4954 §4
R500_NUL = reply(500, "5.5.2", "NUL character in command")
R501_SYNTAX = reply(501, "5.5.4", "Syntax error in parameters or arguments")
R501_NO_ARGS = reply(501, "5.5.4", "This command takes no arguments")
R501_HELO_DOMAIN = reply(501, "5.5.4", "HELO/EHLO needs a domain or address literal")
R501_BAD_ADDRESS = reply(501, "5.1.7", "Bad address syntax")
R501_BAD_RCPT = reply(501, "5.1.3", "Bad recipient address syntax")
R501_AUTH_CANCELLED = reply(501, "5.7.0", "Authentication cancelled")  # RFC 4954 §4
R501_AUTH_BASE64 = reply(501, "5.5.2", "Cannot decode the BASE64 response")  # RFC 4954 §4
R502_EXPN_DISABLED = reply(502, "5.5.1", "EXPN not available")
R502_NOT_IMPLEMENTED = reply(502, "5.5.1", "Command not implemented")
R503_HELO_FIRST = reply(503, "5.5.1", "Send HELO/EHLO first")
R503_EHLO_FIRST = reply(503, "5.5.1", "This command needs EHLO first")
R503_MAIL_FIRST = reply(503, "5.5.1", "Need MAIL command first")  # RCPT, DATA or BDAT before MAIL
R503_RCPT_FIRST = reply(503, "5.5.1", "Need RCPT before DATA")
R503_NESTED_MAIL = reply(503, "5.5.1", "Sender already specified")
R503_IN_TRANSACTION = reply(503, "5.5.1", "Not allowed during a mail transaction")
R503_ALREADY_AUTH = reply(503, "5.5.1", "Already authenticated")  # RFC 4954 §4
R503_ALREADY_TLS = reply(503, "5.5.1", "TLS already active")
R503_BDAT_THEN_DATA = reply(503, "5.5.1", "DATA not allowed after BDAT in the same transaction")  # RFC 3030 §2
R504_AUTH_MECHANISM = reply(504, "5.5.4", "Unrecognized or unavailable authentication mechanism")
R504_BODY = reply(504, "5.5.4", "BODY type not supported")
R530_AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required")  # RFC 4954 §6
R530_TLS_REQUIRED = reply(530, "5.7.0", "Must issue a STARTTLS command first")  # RFC 3207 §4
R535_AUTH_FAILED = reply(535, "5.7.8", "Authentication credentials invalid")  # RFC 4954 §6
R538_ENCRYPTION_REQUIRED = reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
R550_NO_SUCH_USER = reply(550, "5.1.1", "No such user here")
R550_RELAY_DENIED = reply(550, "5.7.1", "Relaying denied")
R550_LIST_MEMBERS_ONLY = reply(550, "5.7.1", "Only members may post to this list")
R550_BARE_LINE_ENDING = reply(550, "5.6.0", "Message refused: bare CR or LF in the data (lines must end in CRLF)")
R550_NUL = reply(550, "5.6.0", "Message refused: NUL character in the data")  # RFC 5322 §2.3, RFC 2045 §2.8
R550_VRFY_UNKNOWN = reply(550, "5.1.1", "No such user here")
R552_TOO_BIG = reply(552, "5.3.4", "Message size exceeds the fixed maximum message size")  # RFC 1870 §6
R553_SENDER_NOT_OWNED = reply(553, "5.7.1", "Sender address does not belong to the authenticated user")
R553_UTF8_ADDRESS = reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter")  # RFC 6531 §3.5
R554_NO_VALID_RCPTS = reply(554, "5.5.1", "No valid recipients")  # RFC 5321 §3.3
R554_LOOP = reply(554, "5.4.6", "Too many Received headers: mail loop detected")  # RFC 5321 §6.3
R554_PREGREET = reply(554, "5.5.1", "Protocol error: talked before the greeting")  # RFC 5321 §3.1 (door.py)
R555_PARAM = reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")  # RFC 5321 §4.1.1.11


def dnsbl_blocked(ip: str, zone: str) -> Reply:
    """554 5.7.1 for an MX client a DNS blocklist lists (smtp/dnsbl.py), in Postfix's words (reject_rbl_client,
    whose reply code is 554 too: any 5yz is permanent to the client, RFC 5321 §4.2.1)."""
    return reply(554, "5.7.1", f"Service unavailable; Client host [{ip}] blocked using {zone}")


def greeting(hostname: str) -> Reply:
    """220 `hostname` ESMTP Postroom."""
    # RFC 5321 §4.2: the greeting's first word is the server's domain. Invariant 1: no enhanced code.
    return reply(220, "", f"{hostname} ESMTP Postroom")


def bdat_received(n: int) -> Reply:
    """250 for a BDAT chunk of `n` octets that is not the last."""
    return reply(250, "2.0.0", f"{n} octets received")  # RFC 3030 §2


def queued(queue_id: str) -> Reply:
    """250 for a message that is durable, naming its id (the one in the message's log line)."""
    return reply(250, "2.0.0", f"OK queued as {queue_id}")
