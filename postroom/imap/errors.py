"""What an IMAP command handler raises, and what it returns (style habit 4: handlers raise, one place answers).

Theory of operation
-------------------
A handler (commands.py) returns a `Result`, the tagged OK's response code and text, or raises one of these;
`Session._dispatch` is the one place that writes the tagged response for it (session invariant 1):

* `Bad` (and `parser.ParseError`): the command is malformed, or not valid here -> `tag BAD [code] text`
  (RFC 9051 §7.1.3); counted towards `limits.errors_per_session`;
* `No`: the command was understood and failed -> `tag NO [code] text` (RFC 9051 §7.1.2), with a response code
  of RFC 9051 §7.1 or RFC 5530 §3 (TRYCREATE, CANNOT, NOPERM, LIMIT...) where one applies;
* `Silent`: the handler wrote its tagged response itself (STARTTLS's OK precedes the handshake);
* `Bye`: end the session after `* BYE text` (RFC 9051 §7.1.5).

Store errors (store/api.py) are not wrapped here: the dispatcher maps them to NO with NONEXISTENT, ALREADYEXISTS,
CANNOT, NOPERM or OVERQUOTA, and anything else to `NO [SERVERBUG]` with a logged traceback.

Invariants
1. `text` and `code` are the client's to read: never a password, a path or a traceback.
"""

from __future__ import annotations

Result = tuple[str, str]
"""What a handler returns: (response code, or "", text) of the tagged OK (RFC 9051 §7.1.1)."""


class Bad(Exception):
    """The command is malformed or not valid in this state: tagged BAD (RFC 9051 §7.1.3), `code` e.g.
    "UIDREQUIRED" (RFC 9586 §3) or "" for none."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class No(Exception):
    """The command failed: tagged NO (RFC 9051 §7.1.2), `code` a response code (RFC 9051 §7.1, RFC 5530 §3) or ""."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class Silent(Exception):
    """The handler already wrote its tagged response (STARTTLS's OK goes out before the handshake)."""


class Bye(Exception):
    """End the session after writing `* BYE text` (RFC 9051 §7.1.5)."""
