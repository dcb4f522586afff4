"""Reading a real daemon's Prometheus endpoint (``serve --metrics``)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon_process import DaemonProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def start_metered(directory: Path) -> tuple[DaemonProcess, str]:
    """A daemon serving metrics on a free loopback port, and its metrics URL."""
    daemon = DaemonProcess(directory, ["--metrics", "127.0.0.1:0"]).start()
    line = daemon.wait_for_output("metrics on http://")
    match = re.search(r"http://(\S+)/metrics", line)
    assert match is not None
    return daemon, f"http://{match.group(1)}/metrics"


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def calls_by_method(samples: Samples) -> dict[str, float]:
    """How many gRPC calls the daemon handled, by full method name, whatever their outcome."""
    calls: dict[str, float] = {}
    for (name, labels), count in samples.items():
        if name == "copilotd_rpc_requests_total":
            method = dict(labels)["method"]
            calls[method] = calls.get(method, 0.0) + count
    return calls
