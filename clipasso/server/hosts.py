"""Which host names are this machine's loopback: the server's default exposure and its guard."""

from __future__ import annotations

import ipaddress

#: Host names that reach this machine only. A web page can make a browser send requests to 127.0.0.1
#: (a "simple" cross-site POST needs no preflight) or rebind its own name to it (DNS rebinding); the
#: Host and Origin headers are what tells those apart from the extension, curl and our own page.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback_host(name: str) -> bool:
    """Whether a host name or address is this machine's loopback (127.0.0.0/8, ::1 or localhost)."""
    name = name.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
