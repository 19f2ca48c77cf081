"""``sparsetel monitor``'s web server: the dashboard page (``/``, `cloud.monitor.page`), its
data as JSON (``/api/dashboard``) and the fleet's Prometheus metrics (``/metrics``,
`cloud.monitor.metrics`) from one WSGI app, `monitor_app`. `run_monitor` serves it with
`cloud.webserver.WebServer`, so idle or slow clients cost a socket each and never hold a scrape
up.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app

from ...shared.errors import ConfigError
from ...shared.rundir import MANIFEST_FILE
from ...shared.signals import stop_on_signals
from ..store.database import Store
from ..webserver import WebServer
from .dashboard import Dashboard, DashboardOptions, ModelCatalogue, load_benchmark
from .metrics import FleetCollector
from .page import render_page
from .status import open_existing_store

__all__ = ["monitor_app", "run_monitor"]

log = logging.getLogger(__name__)


def monitor_app(
    store: Store, dashboard: Dashboard | None = None, refresh_s: float = 15.0
) -> Callable[..., Any]:
    """A WSGI app: ``/`` the dashboard page, ``/api/dashboard`` its data as JSON,
    ``/metrics`` the Prometheus text format; anything else 404."""
    dashboard = dashboard or Dashboard(store)
    o = dashboard.options
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store, o.window_s, o.accuracy_window_s, dashboard))
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path in ("/", "/index.html"):
            body = render_page(dashboard.data(), refresh_s).encode()
            kind = "text/html; charset=utf-8"
        elif path == "/api/dashboard":
            body = json.dumps(dashboard.data(), allow_nan=False).encode()
            kind = "application/json"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"sparsetel monitor: the dashboard at /, its data at /api/dashboard, "
                    b"metrics at /metrics\n"]  # fmt: skip
        start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])  # fmt: skip
        return [body]

    return app


MAX_REFRESH_S = 86_400.0


def run_monitor(
    db: str,
    host: str = "127.0.0.1",
    port: int = 9464,
    options: DashboardOptions | None = None,
    models: Sequence[Path] = (),
    models_dir: Path | None = None,
    benchmarks: Sequence[Path] = (),
    refresh_s: float = 15.0,
) -> int:
    """``sparsetel monitor``: serve the dashboard and the metrics until SIGTERM or SIGINT;
    0, 1 when the address cannot be bound, or ConfigError / ValueError (exit 2) for a bad
    option, benchmark file or a database that is not there."""
    options = options or DashboardOptions()
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    if not (math.isfinite(refresh_s) and 0 <= refresh_s <= MAX_REFRESH_S):
        raise ValueError(f"--refresh must be in 0..{MAX_REFRESH_S:g} s, got {refresh_s}")
    curves = [load_benchmark(b) for b in benchmarks]
    for run in models:
        if not (Path(run) / MANIFEST_FILE).is_file():
            raise ConfigError(f"--model {run}: no manifest.json (run `sparsetel export` first)")
    catalogue = ModelCatalogue(list(models), models_dir)
    with open_existing_store(db) as store:
        dashboard = Dashboard(store, catalogue, curves, options)
        server = WebServer(monitor_app(store, dashboard, refresh_s), host, port)
        try:
            server.start()
        except OSError as exc:
            log.error("sparsetel monitor: cannot listen on %s:%s: %s", host, port, exc)
            return 1
        log.info("sparsetel monitor: http://%s:%s/ (metrics at /metrics)", host, server.port)
        stopping = threading.Event()
        try:
            with stop_on_signals(stopping.set):
                while not stopping.wait(0.5):
                    pass
        finally:
            server.stop()
    return 0
