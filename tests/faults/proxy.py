"""A fault-injecting HTTP proxy: in front of a real server, it passes requests through or answers
them badly (errors, delays, dropped connections, slow bodies) as the test programs it at run time.

    with FaultProxy(labelstudio.url) as proxy:
        proxy.fail(502, path=r"/import$", method="POST", after_forward=True)  # landed, answer lost
        ... point the connection at proxy.url and run the stage ...
        assert proxy.faults(r"/import$") == 1                                  # the fault did happen

Rules are tried in the order they were added; the first one that matches a request and has
uses left applies to it (so rules on one path make a sequence). ``after_forward`` says when the
fault strikes: before the request reaches the server (nothing happened there) or after the server
answered (it did the work; the client never hears so). Everything a request got is in ``seen``.
Only the standard library: threads and ``http.client``, one upstream connection per request.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

#: Hop-by-hop headers: about one connection, never forwarded.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "expect", "content-length"}
ANY = ".*"


def s3_error(code: str, message: str) -> bytes:
    """An S3 error document, as S3 (and MinIO, and moto) answer with it."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>fault-proxy</RequestId></Error>").encode()


@dataclass
class Rule:
    """One programmed fault: what it does, which requests it takes, how many times."""

    action: str  # "fail", "delay", "drop" or "slow"
    path: re.Pattern[str]
    method: str | None
    times: int | None  # None: every matching request until cleared
    after_forward: bool
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    rate: int = 0  # bytes per second of a slow body
    used: int = 0

    def takes(self, method: str, path: str) -> bool:
        return ((self.times is None or self.used < self.times) and self.path.search(path) is not None
                and (self.method is None or self.method == method))

    def answer(self) -> "_Answer":
        """The error a "fail" rule sends."""
        return _Answer(self.status, "", list(self.headers.items()), self.body)


@dataclass(frozen=True)
class Seen:
    """A request as the proxy handled it: its fault (None when passed through) and the status it
    answered with (None when it hung up without one, or the client left before an answer)."""

    method: str
    path: str
    fault: str | None
    status: int | None


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 (a free port) in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http://host:port URL, not {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    # Programming faults ------------------------------------------------------------------------

    def fail(self, status: int = 500, *, path: str = ANY, method: str | None = None, times: int | None = 1,
             after_forward: bool = False, retry_after: float | None = None, body: bytes | None = None,
             content_type: str = "application/json") -> Rule:
        """Answer ``status`` instead of the server's answer (with ``Retry-After`` when given)."""
        headers = {"Content-Type": content_type}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if body is None:
            body = json.dumps({"detail": f"fault proxy: injected {status}"}).encode()
        return self._add(Rule("fail", re.compile(path), method, times, after_forward, status=status, body=body,
                              headers=headers))

    def delay(self, seconds: float, *, path: str = ANY, method: str | None = None, times: int | None = 1,
              after_forward: bool = True) -> Rule:
        """Hold the request (before forwarding) or the answer (after) for ``seconds``: a client with a
        shorter timeout gives up, and with ``after_forward`` the server has done the work by then."""
        return self._add(Rule("delay", re.compile(path), method, times, after_forward, seconds=seconds))

    def drop(self, *, path: str = ANY, method: str | None = None, times: int | None = 1,
             after_forward: bool = True) -> Rule:
        """Close the connection: before forwarding, with no answer; after, halfway through the body
        (or before any byte of an empty one)."""
        return self._add(Rule("drop", re.compile(path), method, times, after_forward))

    def slow(self, bytes_per_second: int, *, path: str = ANY, method: str | None = None,
             times: int | None = None) -> Rule:
        """Send the server's answer at ``bytes_per_second``."""
        return self._add(Rule("slow", re.compile(path), method, times, True, rate=bytes_per_second))

    def clear(self) -> None:
        """Remove every rule: from now on everything passes through."""
        with self._lock:
            self.rules.clear()

    def faults(self, path: str = ANY, method: str | None = None) -> int:
        """How many requests (matching ``path`` and ``method``) a fault struck."""
        return len(self.requests(path, method, faulted=True))

    def requests(self, path: str = ANY, method: str | None = None, faulted: bool | None = None) -> list[Seen]:
        pattern = re.compile(path)
        with self._lock:
            return [seen for seen in self.seen if pattern.search(seen.path) and method in (None, seen.method)
                    and (faulted is None or (seen.fault is not None) == faulted)]

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def _take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            rule = next((rule for rule in self.rules if rule.takes(method, path)), None)
            if rule is not None:
                rule.used += 1
            return rule

    def _record(self, method: str, path: str, fault: str | None, status: int | None) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, fault, status))


@dataclass
class _Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_Relay):
        owner = proxy

    return Handler


class _Relay(BaseHTTPRequestHandler):
    """One client connection: each request is read whole, faulted or forwarded, and answered."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the servers behind it speak
    timeout = 120
    owner: FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's name)
        pass

    def relay(self) -> None:
        """Each request is recorded before its answer goes out: a client that has its answer can
        read ``requests()`` at once and find it there."""
        method, path = self.command, urlsplit(self.path).path
        body = self._request_body()
        rule = self.owner._take(method, path)
        fault = rule.action if rule else None

        def record(status: int | None) -> None:
            self.owner._record(method, path, fault, status)

        try:
            if rule and not rule.after_forward:
                if rule.action == "fail":
                    record(rule.status)
                    return self._send(rule.answer(), method)
                if rule.action == "drop":
                    record(None)
                    return self._hang_up()
                time.sleep(rule.seconds)
            answer = self._forward(method, body)
            if answer is None:
                fault = "upstream down"
                answer = _Answer(502, "Bad Gateway", [("Content-Type", "application/json")], json.dumps(
                    {"detail": f"fault proxy: upstream {self.owner.upstream_host}:{self.owner.upstream_port} "
                               "is unreachable"}).encode())
            elif rule and rule.action == "fail":
                answer = rule.answer()
            elif rule and rule.action == "drop":
                record(None if method == "HEAD" or not answer.body else answer.status)
                return self._send_half(answer, method)
            elif rule and rule.action == "delay":
                time.sleep(rule.seconds)
            rate = rule.rate if rule and rule.action == "slow" else 0
            record(answer.status)
            self._send(answer, method, rate)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the client gave up (a timeout): recorded already, nothing left to answer

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = relay

    def _request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, method: str, body: bytes) -> _Answer | None:
        """The upstream's answer, read whole; None when it cannot be reached."""
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        if body or method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=600)
        try:
            upstream.request(method, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            content = response.read()
        except (ConnectionError, socket.timeout, http.client.HTTPException, OSError):
            return None
        finally:
            upstream.close()
        kept = [(name, value) for name, value in response.getheaders() if name.lower() not in HOP_BY_HOP]
        if method == "HEAD" and response.getheader("Content-Length") is not None:
            kept.append(("Content-Length", str(response.getheader("Content-Length"))))
        return _Answer(response.status, response.reason, kept, content)

    def _head(self, answer: _Answer, method: str) -> None:
        self.send_response_only(answer.status, answer.reason or None)
        for name, value in answer.headers:
            self.send_header(name, value)
        if method != "HEAD":
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()

    def _send(self, answer: _Answer, method: str, rate: int = 0) -> None:
        self._head(answer, method)
        if method == "HEAD":
            return
        if not rate:
            self.wfile.write(answer.body)
            return
        step = max(1, rate // 10)
        for start in range(0, len(answer.body), step):
            self.wfile.write(answer.body[start:start + step])
            time.sleep(0.1)

    def _send_half(self, answer: _Answer, method: str) -> None:
        """Headers promising the whole body, half of it, then the connection closes."""
        if method == "HEAD" or not answer.body:
            return self._hang_up()
        self._head(answer, method)
        self.wfile.write(answer.body[:len(answer.body) // 2])
        self._hang_up()

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return None
