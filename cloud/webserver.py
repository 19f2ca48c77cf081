"""The HTTP server of the cloud's web endpoints (the monitor, serve's metrics): waitress.

A stdlib `http.server` answers one connection at a time, so one client that sends half a
request and waits stops every scrape. waitress reads requests in one event loop (idle or slow
clients cost a socket, not a thread), hands only complete requests to a few worker threads,
closes connections idle for `channel_timeout_s`, and stops accepting beyond
`connection_limit` open connections (they wait in the listen backlog instead). The process's
open-files limit is raised to hold that many (or the cap lowered to what it can hold): a
process out of descriptors would spin on the listening socket, logging an accept error each
turn, instead of waiting below the cap.

`WebServer` runs that loop in a daemon thread: `start()` binds (raising OSError when the
address is taken), `port` is the port it got (ask for 0 to get a free one), `stop()` closes
every connection and the worker threads.
"""

from __future__ import annotations

import logging
import resource
import threading
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

__all__ = ["CHANNEL_TIMEOUT_S", "CONNECTION_LIMIT", "WebServer", "fit_open_files"]

log = logging.getLogger(__name__)

CONNECTION_LIMIT = 1024  # open connections at most; more wait in the listen backlog
CHANNEL_TIMEOUT_S = 10.0  # a connection with no request in progress is closed after this
THREADS = 4  # requests handled at once (each a store read of a few milliseconds)
MAX_REQUEST_BYTES = 64 * 1024  # headers and body: these endpoints take no uploads
RESERVED_FDS = 128  # descriptors left for everything else the process opens

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def fit_open_files(connection_limit: int) -> int:
    """The connection cap this process can hold open: its open-files soft limit raised
    towards the hard one as needed (RESERVED_FDS more than the cap), else the cap lowered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connection_limit + RESERVED_FDS
    if soft == resource.RLIM_INFINITY or soft >= want:
        return connection_limit
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    except (ValueError, OSError) as exc:
        log.debug("cannot raise the open-files limit to %d: %s", new, exc)
    if soft >= want:
        return connection_limit
    fitted = max(1, soft - RESERVED_FDS)
    log.warning(
        "open-files limit %d: at most %d connections at once instead of %d (raise LimitNOFILE)",
        soft, fitted, connection_limit,
    )  # fmt: skip
    return fitted


class WebServer:
    """`app` served on `host`:`port` by waitress in a background thread."""

    def __init__(
        self,
        app: WsgiApp,
        host: str,
        port: int,
        *,
        connection_limit: int = CONNECTION_LIMIT,
        channel_timeout_s: float = CHANNEL_TIMEOUT_S,
        threads: int = THREADS,
        name: str = "sparsetel-web",
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if connection_limit < 1 or threads < 1 or not channel_timeout_s > 0:
            raise ValueError("connection_limit and threads must be >= 1, channel_timeout_s > 0")
        self._app, self._host, self._requested_port = app, host, port
        self._limits = {
            "connection_limit": connection_limit,
            "channel_timeout": channel_timeout_s,
            "cleanup_interval": max(1.0, channel_timeout_s / 2),
            "threads": threads,
        }
        self._name = name
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def connection_limit(self) -> int:
        """Open connections at most (once started: as `fit_open_files` left it)."""
        return int(self._limits["connection_limit"])

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return int(self._server.effective_port)

    def start(self) -> None:
        """Bind and serve in a daemon thread; OSError when the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("the server was already started")
        self._limits["connection_limit"] = fit_open_files(self.connection_limit)
        self._server = create_server(
            self._app,
            host=self._host,
            port=self._requested_port,
            asyncore_use_poll=True,  # select() cannot watch descriptors above 1023
            max_request_header_size=MAX_REQUEST_BYTES,
            max_request_body_size=MAX_REQUEST_BYTES,
            expose_tracebacks=False,
            ident="sparsetel",
            **self._limits,
        )
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        server = self._server
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=1)
        except Exception:  # the loop must not die silently: the endpoint would just vanish
            log.exception("web server loop failed")
        finally:  # in this thread, which owns the channels
            wasyncore.close_all(server._map)
            server.task_dispatcher.shutdown()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every connection; wait for the loop to end."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
