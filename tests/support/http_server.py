"""A real HTTP server for tests: serves a local folder on 127.0.0.1, in a thread, quietly."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@contextlib.contextmanager
def serve_directory(path) -> Iterator[str]:
    """Serve `path` over HTTP on a free loopback port; yields the base URL (no trailing slash).

    The server runs in a daemon thread and is shut down (socket closed) when the block exits.
    """
    handler = functools.partial(_QuietHandler, directory=str(Path(path)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    # A short poll interval makes shutdown() return at once instead of after up to 0.5 s.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http-server", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
