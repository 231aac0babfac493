"""A loopback HTTP/1.1 server in front of an emulator (stdlib only, keep-alive, threaded).

Anything that speaks HTTP can use it: the official SDK with ``base_url``, LangChain's
``ChatAnthropic(base_url=…)``, ``curl``, or a program reading ``ANTHROPIC_BASE_URL``.
Streams use chunked transfer encoding, so a cut stream looks to the client like a real
connection reset mid-body.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from haikucache._clock import Clock
from haikucache.testing._emulator import ConnectionCut

if TYPE_CHECKING:
    from haikucache.testing._emulator import Emulator, EmulatorResponse

__all__ = ["EmulatorServer", "run_server"]

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_MAX_LINE = 65_536
_MAX_HEADERS = 200
_SERVER_NAME = "haikucache-emulator"


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Many clients open a burst of keep-alive connections at once (SDK pools, benchmarks).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self._connections_lock:
            self._connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Close idle keep-alive connections so their handler threads end now."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _BadRequest(Exception):
    pass


class _Handler(socketserver.StreamRequestHandler):
    """A minimal HTTP/1.1 server loop.

    ``http.server`` parses headers with the ``email`` package, which costs more than the
    emulator itself; requests here are simple enough for a line-by-line parser.
    """

    # Headers and body go out in one write, and small SSE frames must not wait for a
    # delayed ACK: without TCP_NODELAY a keep-alive client sees 40 ms stalls.
    disable_nagle_algorithm = True
    server: _Server

    def handle(self) -> None:
        try:
            while self._handle_one():
                pass
        except (ConnectionError, TimeoutError, OSError):
            # The client went away; nothing to answer.
            return

    def _handle_one(self) -> bool:
        line = self.rfile.readline(_MAX_LINE)
        while line in (b"\r\n", b"\n"):
            line = self.rfile.readline(_MAX_LINE)
        if not line:
            return False
        try:
            method, target, version = line.decode("latin-1").split()
            headers = self._read_headers()
        except (ValueError, _BadRequest):
            self._write_simple(400, b"Bad Request")
            return False
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self._write_simple(505, b"HTTP Version Not Supported")
            return False
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self._read_body(headers)
        host = headers.get("host") or "{}:{}".format(*self.server.server_address[:2])
        answer = self.server.emulator.handle(method, f"http://{host}{target}", headers, body)
        if answer.delay > 0:
            time.sleep(answer.delay)
        if answer.drop:
            self._drop()
            return False
        if answer.chunks is None:
            self._write_head(
                answer,
                version,
                keep_alive,
                [("content-length", str(len(answer.body)))],
                answer.body,
            )
            return keep_alive
        chunked = version == "HTTP/1.1"
        keep_alive = keep_alive and chunked
        self._write_head(
            answer, version, keep_alive, [("transfer-encoding", "chunked")] if chunked else [], b""
        )
        try:
            for chunk in answer.chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        except ConnectionCut:
            self._drop()
            return False
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        return keep_alive

    def _read_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            raw = self.rfile.readline(_MAX_LINE)
            if raw in (b"\r\n", b"\n", b""):
                return headers
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise _BadRequest
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        raise _BadRequest

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if _QUICKACK is not None:
            # Clients such as httpcore write the headers and the body separately; with Nagle
            # on their side the body waits for our ACK of the headers, which Linux delays
            # unless asked to acknowledge at once. Needs re-arming per read.
            try:
                self.connection.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(_MAX_LINE)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, if any, end with a blank line.
                    while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(_MAX_LINE)
        length = int(headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _write_head(
        self,
        answer: EmulatorResponse,
        version: str,
        keep_alive: bool,
        extra: list[tuple[str, str]],
        body: bytes,
    ) -> None:
        try:
            reason = HTTPStatus(answer.status).phrase
        except ValueError:
            reason = "Overloaded" if answer.status == 529 else "Unknown"
        lines = [f"HTTP/1.1 {answer.status} {reason}"]
        lines.extend(f"{name}: {value}" for name, value in [*answer.headers, *extra])
        lines.append(f"server: {_SERVER_NAME}")
        if not keep_alive:
            lines.append("connection: close")
        elif version == "HTTP/1.0":
            lines.append("connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)

    def _write_simple(self, status: int, text: bytes) -> None:
        self.wfile.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, text, len(text), text)
        )

    def _drop(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class EmulatorServer:
    """A running loopback server; ``base_url`` to connect, ``stop()`` to end it."""

    def __init__(self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorServer:
        """Bind and serve in a background thread; returns ``self``."""
        server = _Server((self._host, self._port), self.emulator)
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"haikucache-emulator:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        """``http://host:port`` (IPv6 hosts in brackets)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self._port

    def stop(self) -> None:
        """Stop serving, close open connections and free the port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"EmulatorServer({self.base_url!r}, {state})"


def run_server(
    host: str = "127.0.0.1",
    port: int = 8123,
    *,
    clock: Clock | None = None,
    seed: int = 0,
    emulator: Emulator | None = None,
) -> None:
    """Serve an emulator until interrupted (Ctrl-C); prints the base URL first.

    Used by ``haikucache emulator --port N``. The first line printed is
    ``haikucache emulator listening on <base URL>``; then how many API keys it accepts
    (never the keys).

    Args:
        host: the interface to bind.
        port: the TCP port (0 picks a free one).
        clock: the clock of the fresh emulator (not with ``emulator``).
        seed: the seed of the fresh emulator (not with ``emulator``).
        emulator: serve this configured emulator instead of a fresh one.
    """
    from haikucache.testing._emulator import Emulator

    if emulator is None:
        emulator = Emulator(clock=clock, seed=seed)
    elif clock is not None or seed != 0:
        raise ValueError("pass clock and seed to the Emulator, not to run_server")
    server = emulator.start_server(host, port)
    keys = emulator.api_keys
    print(f"haikucache emulator listening on {server.base_url}", flush=True)
    print(f"  export ANTHROPIC_BASE_URL={server.base_url}", flush=True)
    print(
        "  api keys: any non-empty key accepted"
        if keys is None
        else f"  api keys: {len(keys)} accepted (x-api-key or Authorization: Bearer)",
        flush=True,
    )
    if emulator.extra_models:
        print(f"  extra models: {', '.join(sorted(emulator.extra_models))}", flush=True)
    print(f"  batches end after {emulator.batch_processing_seconds:g} s", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
