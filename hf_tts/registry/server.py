"""Running the registry: the app under uvicorn (its httptools protocol: llhttp parses in C, so a multi-GB upload
body is not sliced and copied in Python as h11 does), with the limits a server reachable by a team needs.

- keep-alive connections, closed after `timeout_keep_alive` idle seconds; a connection that has not finished
  sending its request headers within `header_timeout` seconds is closed too (uvicorn itself only times out
  connections that already answered one request, so idle fresh connections would otherwise stay forever);
- a request body that stalls longer than `body_timeout` seconds between two pieces gets 408;
- `limit_concurrency`: past that many connections or requests, new requests get 503 instead of queueing;
- request headers capped at `MAX_HEADER_BYTES` (400 past it; llhttp alone would buffer a header of any length);
  llhttp refuses a malformed or negative Content-Length with 400 before any handler runs; commit lines and JSON
  bodies are capped in the app;
- TCP_NODELAY on every connection, so a response's headers and body never wait on Nagle + delayed ACK (the folder
  server spent 45 ms per small GET there; asyncio sets it only for sockets created with proto IPPROTO_TCP).

`LocalHubServer` keeps the interface of the earlier in-process server: `LocalHubServer(root, host, port, ...)`,
`.serve_in_thread()`, `.serve_forever()`, `.url`, `.server_address`, `.stop()`, a context manager, and the
`.token` / `.read_only` switches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hf_tts.registry.app import AppSettings, create_app
from hf_tts.registry.auth import AccessPolicy
from hf_tts.registry.commit_stream import MAX_LINE_BYTES
from hf_tts.registry.store import Store

logger = logging.getLogger("hf_tts.registry")


MAX_HEADER_BYTES = 64 << 10


class _RegistryHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for receiving each request's headers (slow or idle clients) and a
    cap on their size."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; an accepted socket of a listening
        # socket made with proto 0 has Nagle on, and every small response then waits ~40 ms for a delayed ACK.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._reading_headers = True
        self._header_bytes = 0
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        # Bytes that arrive while a request's headers are incomplete count against the cap. A read that ends the
        # previous body and starts the next headers is not counted: the cap bounds memory, it is not exact.
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._reading_headers and self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self.send_400_response(f"Request headers are larger than {MAX_HEADER_BYTES} bytes.")

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_headers = True

    def _arm_header_deadline(self) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            self._header_deadline.cancel()  # type: ignore[union-attr]
        waiting_since = self.cycle
        timeout = getattr(self.config, "registry_header_timeout", 10.0)

        def expire() -> None:
            # Still no new request since the deadline was set: the client is idle or dribbling headers.
            if self.cycle is waiting_since and not self.transport.is_closing():
                self.transport.close()

        self._header_deadline = self.loop.call_later(timeout, expire)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            self._header_deadline.cancel()  # type: ignore[union-attr]
        super().connection_lost(exc)


def configure_logging(access_log: bool) -> None:
    """Errors (with tracebacks) always reach stderr; the access log and start/stop notes only without --quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("uvicorn.error", "hf_tts.registry"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(logging.INFO if access_log else logging.WARNING)
        log.propagate = False
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = [handler] if access_log else []
    access.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    access.propagate = False


class LocalHubServer:
    """The registry on a socket. `serve_in_thread()` for tests and scripts, `serve_forever()` for the CLI."""

    def __init__(
        self,
        root: str | os.PathLike,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        database: str | None = None,
        token: str | None = None,
        read_only: bool = False,
        require_token_for_reads: bool = False,
        public_url: str | None = None,
        log_requests: bool = False,
        limit_concurrency: int = 1000,
        timeout_keep_alive: int = 5,
        header_timeout: float = 10.0,
        body_timeout: float = 60.0,
        max_upload_bytes: int = 64 << 30,
        max_line_bytes: int = MAX_LINE_BYTES,
    ):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(2048)
            self._socket.set_inheritable(True)
        except OSError:
            self._socket.close()
            raise
        self.server_address = self._socket.getsockname()
        self.store = Store(root, database)
        self.policy = AccessPolicy(
            static_token=token or None, read_only=read_only, require_token_for_reads=require_token_for_reads
        )
        self.settings = AppSettings(
            public_url=(public_url or self.url).rstrip("/"),
            max_upload_bytes=max_upload_bytes,
            max_line_bytes=max_line_bytes,
            body_timeout=body_timeout,
        )
        self.app = create_app(self.store, self.policy, self.settings)
        config = uvicorn.Config(
            self.app,
            http=_RegistryHttpProtocol,
            loop="auto",  # uvloop (a dependency): about 8% less registry CPU per upload than asyncio's own loop
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=log_requests,
            limit_concurrency=limit_concurrency,
            timeout_keep_alive=timeout_keep_alive,
            timeout_graceful_shutdown=5,
            server_header=False,
            proxy_headers=False,
        )
        config.registry_header_timeout = header_timeout  # type: ignore[attr-defined]  (read by the protocol)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    # The access switches of the earlier server, still used by tests on a running server.
    @property
    def token(self) -> str | None:
        return self.policy.static_token

    @token.setter
    def token(self, value: str | None) -> None:
        self.policy.static_token = value or None

    @property
    def read_only(self) -> bool:
        return self.policy.read_only

    @read_only.setter
    def read_only(self, value: bool) -> None:
        self.policy.read_only = value

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until SIGINT/SIGTERM (uvicorn's graceful shutdown), then release the store."""
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self.close()

    def serve_in_thread(self) -> LocalHubServer:
        # uvicorn's own runner, so the thread gets the same event loop as `serve_forever` (signals stay untouched
        # off the main thread).
        self._thread = threading.Thread(
            target=lambda: self._server.run(sockets=[self._socket]), name="hf-tts-registry", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the registry server did not start (see the log above)")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.close()

    def close(self) -> None:
        self._socket.close()
        self.store.close()

    def __enter__(self) -> LocalHubServer:
        return self.serve_in_thread()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    """Block until a registry at `url` answers (for callers that start it as a subprocess)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/models?limit=1", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
