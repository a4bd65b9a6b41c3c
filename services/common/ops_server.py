"""Health, readiness and Prometheus metrics over HTTP for services that have no web framework.

The ingest service is a Kafka loop, not a web app; a tiny threaded HTTP server gives it the
same `/healthz`, `/readyz` and `/metrics` endpoints as the FastAPI and KServe services, so
probes and scrapers treat every pod alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

Check = Callable[[], tuple[bool, str]]
"""Returns (ok, detail); detail is shown in the probe's response body."""


class OpsServer:
    """Serves `/healthz` (alive), `/readyz` (ready for traffic) and `/metrics`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        live: Check,
        ready: Check,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        checks = {"/healthz": live, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(registry)
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path in checks:
                    ok, detail = checks[path]()
                    self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Probes arrive every few seconds; logging each would drown the service's logs."""

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ops-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked for)."""
        return int(self._server.server_address[1])

    def start(self) -> OpsServer:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
