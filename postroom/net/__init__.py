"""What every protocol shares: listeners (`listener.py`), TLS (`tls.py`), the connection driver with its limits,
idle timeouts and deadlines (`connection.py`), and the receive buffer of the sans-I/O cores (`receivebuffer.py`).

Nothing is imported here, so a protocol core can use `receivebuffer` without pulling in asyncio or sockets.
"""
