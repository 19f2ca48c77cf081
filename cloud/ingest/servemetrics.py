"""serve's counters as Prometheus metrics while it runs: ``sparsetel serve --metrics HOST:PORT``.

`ServeCollector` reads the service's stats at each scrape (`DecoderService.stats`) and
`serve_metrics` serves them at ``/metrics`` with `cloud.webserver.WebServer`. Names, all
``sparsetel_serve_*`` in base units:

- counters: ``messages_received_total``, ``frames_stored_total``,
  ``measurements_stored_total``, ``duplicates_total``, ``frames_parked_total``,
  ``rejected_total`` (label ``reason``), ``acks_total`` (QoS 1 acknowledged once
  committed), ``acks_skipped_total`` (their connection had dropped: the broker resends),
  ``queue_waits_total`` and ``queue_wait_seconds_total`` (back-pressure: the network thread
  waited for room), ``messages_dropped_total`` (QoS 0 heartbeats, queue full),
  ``connects_total``, ``takeovers_total``, ``undecodable_measurements_total`` (label
  ``reason``: temporal-codec measurements given up, `cloud.ingest.chains`), ``frames_pending``
  (chained frames kept to wait for their predecessor), ... and every other counter of the
  service as ``<name>_total``;
- gauges: ``queue_depth`` and ``queue_bytes`` (waiting for the worker) beside
  ``queue_capacity`` and ``queue_capacity_bytes``, ``connected``, ``models``,
  ``uptime_seconds``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ...shared.errors import ConfigError
from ..webserver import WebServer

__all__ = ["ServeCollector", "metrics_app", "parse_listen", "serve_metrics"]

PREFIX = "sparsetel_serve_"
# stats key -> (metric name, help); other integer counters keep their key as name.
_COUNTERS = {
    "messages": ("messages_received", "MQTT messages received (DATA, STATE, HEALTH)"),
    "frames_ok": ("frames_stored", "frames decoded and stored"),
    "records_stored": ("measurements_stored", "measurements stored"),
    "duplicates": ("duplicates", "frames the store already held (repeats)"),
    "predictions": ("predictions", "KPI predictions stored"),
    "parked": ("frames_parked", "frames parked until their model is registered"),
    "unparked": ("frames_unparked", "parked frames decoded once their model came"),
    "acks": ("acks", "QoS 1 messages acknowledged to the broker, each once committed"),
    "acks_stale": ("acks_skipped", "acknowledgements not sent: the connection had dropped"),
    "queue_waits": ("queue_waits", "times the network thread waited for room in the queue"),
    "queue_full": ("messages_dropped", "QoS 0 messages (heartbeats) dropped: queue full"),
    "connects": ("connects", "connections to the broker"),
    "disconnects": ("disconnects", "connections lost"),
    "takeovers": ("takeovers", "connections taken over by another client with this id"),
    "receipts": ("receipts", "store receipts published to the edges"),
    "dead_letters": ("dead_letters", "rejected messages copied to their DEAD topic"),
    "missing_frames": ("missing_frames", "frames missing from the edges' sessions"),
    "frames_v3": ("frames_v3", "version 3 (temporal-codec) frames received"),
    "pending": ("frames_pending", "chained frames kept until their predecessor is decoded"),
    "pending_decoded": ("frames_pending_decoded", "pending frames decoded once it was"),
    "undecodable_frames": ("undecodable_frames", "temporal-codec frames given up"),
}
_SKIP = frozenset({"undecodable_measurements"})  # by reason below
_MILLISECONDS = {  # counted in ms, exported in seconds
    "queue_wait_ms": ("queue_wait_seconds", "time the network thread waited for room in all"),
}
_GAUGES = {
    "queue_depth": ("queue_depth", "messages waiting for the worker"),
    "queue_bytes": ("queue_bytes", "bytes of the messages waiting for the worker"),
    "queue_capacity": ("queue_capacity", "messages the queue holds at most"),
    "queue_capacity_bytes": ("queue_capacity_bytes", "bytes the queue holds at most"),
    "connected": ("connected", "1 while connected and subscribed to the broker"),
    "uptime_s": ("uptime_seconds", "seconds since the service started"),
}
_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(?P<port>[0-9]{1,5})")


class ServeCollector(Collector):
    """The metrics of one service, from `stats()` (a `DecoderService.stats` dict) at each
    scrape."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for key, value in sorted(stats.items()):
            if key in _GAUGES or key in _SKIP or not _is_count(value) or not _NAME.fullmatch(key):
                continue
            if key in _MILLISECONDS:
                name, text = _MILLISECONDS[key]
                yield CounterMetricFamily(PREFIX + name, text, value=value / 1000)
                continue
            name, text = _COUNTERS.get(key, (key, f"serve counter {key}"))
            yield CounterMetricFamily(PREFIX + name, text, value=value)
        rejected = CounterMetricFamily(
            PREFIX + "rejected", "messages rejected, by reason", labels=["reason"]
        )
        for reason, count in sorted((stats.get("rejects") or {}).items()):
            rejected.add_metric([str(reason)], count)
        yield rejected
        undecodable = CounterMetricFamily(
            PREFIX + "undecodable_measurements",
            "temporal-codec measurements given up, by reason",
            labels=["reason"],
        )
        for reason, count in sorted((stats.get("undecodable") or {}).items()):
            undecodable.add_metric([str(reason)], count)
        yield undecodable
        for key, (name, text) in _GAUGES.items():
            value = stats.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield GaugeMetricFamily(PREFIX + name, text, value=float(value))
        models = stats.get("models")
        if isinstance(models, list):
            yield GaugeMetricFamily(PREFIX + "models", "models loaded", value=len(models))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_listen(text: str, key: str = "metrics") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ConfigError naming `key`."""
    match = _LISTEN.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"expected HOST:PORT, got {text!r}", key=key)
    port = int(match["port"])
    if port > 65535:
        raise ConfigError(f"port must be in 0..65535, got {port}", key=key)
    return match["host"].strip("[]"), port


def metrics_app(stats: Callable[[], dict[str, Any]]) -> Callable[..., Any]:
    """A WSGI app: the metrics at ``/metrics``, 404 elsewhere."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServeCollector(stats))
    prometheus = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the metrics are at /metrics\n"]
        return prometheus(environ, start_response)

    return app


def serve_metrics(stats: Callable[[], dict[str, Any]], listen: str) -> WebServer:
    """Serve the metrics of `stats` on `listen` (HOST:PORT) in a background thread; OSError
    when the address cannot be bound."""
    host, port = parse_listen(listen)
    server = WebServer(metrics_app(stats), host, port, name="sparsetel-serve-metrics")
    server.start()
    return server
