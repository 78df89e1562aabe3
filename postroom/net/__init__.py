"""What every protocol shares: listeners, TLS, the line/literal reader with limits, per-IP connection limits,
idle timeouts and the session log line. See `connection.py` and `listener.py` for the rules."""

from postroom.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    LiteralTooLarge,
    NetError,
    PlaintextAfterStartTLS,
    ShuttingDown,
    TLSFailed,
)
from postroom.net.listener import Handler, ListenerSpec, NetServer, refusal

__all__ = [
    "Connection", "ConnectionClosed", "Handler", "IdleTimeout", "LineTooLong", "ListenerSpec", "LiteralTooLarge",
    "NetError", "NetServer", "PlaintextAfterStartTLS", "ShuttingDown", "TLSFailed", "refusal",
]
