"""Whether a host name or bind address stays on this machine.

One answer for every place that warns or refuses on it (an MQTT password over plain TCP, a
metrics endpoint or the console bound beyond loopback): names are never resolved, because a
warning must not wait on DNS, and anything that is not provably local counts as remote.
"""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` (and ``*.localhost``) and literal loopback addresses."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


__all__ = ["is_loopback_host"]
