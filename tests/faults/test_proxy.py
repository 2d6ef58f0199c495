"""The fault proxy itself, in front of a small real HTTP server that counts what reached it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.faults.proxy import FaultProxy, s3_error

BODY = b"0123456789" * 1000


class Upstream(BaseHTTPRequestHandler):
    """Answers every request with BODY; counts the requests that reached it."""

    protocol_version = "HTTP/1.1"
    reached: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(length)
        Upstream.reached.append(f"{self.command} {self.path} {len(sent)}")
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(BODY)

    do_GET = do_POST = do_HEAD = answer


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    Upstream.reached = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with FaultProxy(f"http://127.0.0.1:{server.server_address[1]}") as running:
        yield running
    server.shutdown()
    server.server_close()


def test_passes_through_and_fails_the_next_n_matching_requests(proxy: FaultProxy) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        assert client.get("/a").content == BODY
        assert client.post("/a", content=b"x" * 5000).status_code == 201
        assert client.head("/a").headers["content-length"] == str(len(BODY))
        proxy.fail(503, path=r"^/api/", method="POST", times=2, retry_after=3)
        assert client.get("/api/x").status_code == 200  # not the method the rule names
        answers = [client.post("/api/x", content=b"{}") for _ in range(3)]
        assert [a.status_code for a in answers] == [503, 503, 201]
        assert answers[0].headers["retry-after"] == "3"
        proxy.fail(503, path=r"^/bucket/", body=s3_error("SlowDown", "Please reduce your request rate."),
                   content_type="application/xml", times=None)
        assert [client.get("/bucket/k").status_code for _ in range(3)] == [503] * 3
        assert b"<Code>SlowDown</Code>" in client.get("/bucket/k").content
        proxy.clear()
        assert client.get("/bucket/k").status_code == 200
    # before forwarding: the two failed POSTs and the four S3 errors never reached the server
    assert Upstream.reached == ["GET /a 0", "POST /a 5000", "HEAD /a 0", "GET /api/x 0", "POST /api/x 2",
                                "GET /bucket/k 0"]
    assert proxy.faults() == 6 and proxy.faults(r"^/bucket/") == 4


def test_a_fault_after_forwarding_lets_the_server_do_the_work(proxy: FaultProxy) -> None:
    proxy.fail(502, path="/import", after_forward=True)
    proxy.drop(path="/import")
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        assert client.post("/import", content=b"1").status_code == 502
        with pytest.raises(httpx.RemoteProtocolError):  # headers, half the body, then the connection closes
            client.post("/import", content=b"2").read()
        assert client.post("/import", content=b"3").status_code == 201
    assert Upstream.reached == ["POST /import 1"] * 3
    assert [seen.fault for seen in proxy.requests("/import")] == ["fail", "drop", None]


def test_drop_before_forwarding_delays_and_slow_bodies(proxy: FaultProxy) -> None:
    proxy.drop(path="/gone", after_forward=False)
    proxy.delay(1.5, path="/late")
    proxy.slow(20_000, path="/slow")
    with httpx.Client(base_url=proxy.url, timeout=httpx.Timeout(0.5, connect=5)) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
            client.get("/gone")
        with pytest.raises(httpx.ReadTimeout):
            client.get("/late")
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        started = time.monotonic()
        assert client.get("/slow").content == BODY  # 10 kB at 20 kB/s
        assert 0.4 < time.monotonic() - started < 3
    assert [r.split()[1] for r in Upstream.reached] == ["/late", "/slow"]  # the dropped one never arrived


def test_an_unreachable_upstream_is_a_502() -> None:
    dead = FaultProxy("http://127.0.0.1:9")  # the discard port: nothing listens
    with dead, httpx.Client(base_url=dead.url, timeout=10) as client:
        answer = client.get("/x")
    assert answer.status_code == 502 and "unreachable" in answer.json()["detail"]
    assert [seen.fault for seen in dead.requests()] == ["upstream down"]
