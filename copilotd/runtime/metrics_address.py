"""``--metrics HOST:PORT``, checked without loading prometheus_client.

The check runs at every start; ``runtime.metrics`` (and prometheus_client,
about 0.1 s of imports) is loaded only when an address is given.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


class MetricsAddressError(ValueError):
    """``--metrics`` names something other than a loopback host and a port."""


@dataclass(frozen=True)
class MetricsAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> MetricsAddress:
        """``HOST:PORT`` (``[::1]:PORT`` for IPv6); the host must be a loopback address."""
        host, sep, port_text = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise MetricsAddressError(
                f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464 (port 0: any free)"
            )
        if host != "localhost":
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise MetricsAddressError(
                    f"--metrics {text!r}: the metrics endpoint has no authentication, so it "
                    "binds only to a loopback address (127.0.0.1, ::1 or localhost)"
                )
        return cls(host, int(port_text))
