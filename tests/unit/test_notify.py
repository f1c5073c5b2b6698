"""pgtape/notify.py: webhooks posted to a real local HTTP receiver; Watch's edges on a fake clock."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pgtape import notify
from pgtape.notify import Notifier, Watch


class Receiver:
    """A webhook endpoint on 127.0.0.1: answers each POST with the next scripted status (then 200)
    and records what was delivered. `hold` blocks every request until it is set."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.posts: list[tuple[int, dict[str, str], dict[str, object]]] = []
        self.hold = threading.Event()
        self.hold.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.hold.wait(10)
                with lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.posts.append((status, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0/secret-token?key=s3cret"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def delivered(self) -> list[dict[str, object]]:
        return [p for status, _, p in self.posts if status == 200]

    def stop(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(statuses: list[int] | None = None) -> Receiver:
        started.append(Receiver(statuses))
        return started[-1]

    yield start
    for r in started:
        r.stop()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in list(self.records) if r.levelno >= level]


@pytest.fixture
def logs() -> Iterator[Records]:
    # A handler on the module's own logger: pgtape.log.setup may have stopped propagation to root.
    handler, logger = Records(), logging.getLogger("pgtape.notify")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def wait_for(what: str, probe: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/secret-token"


def test_payload_and_content_type(receiver: Callable[..., Receiver]) -> None:
    a, b = receiver(), receiver()
    n = Notifier([a.url, b.url], backoff=0.01)
    n.emit(notify.snapshot_failed("20261202T165000Z-1", ["public.payments", "public.orders"], "disk full"))
    n.close(5)
    for r in (a, b):
        [(status, headers, payload)] = r.posts
        assert headers["Content-Type"] == "application/json"
        assert payload == {"text": "pgtape: snapshot 20261202T165000Z-1 of public.payments, public.orders failed: "
                                   "disk full",
                           "event": "snapshot_failed", "time": payload["time"], "host": socket.gethostname(),
                           "snapshot_id": "20261202T165000Z-1", "tables": ["public.payments", "public.orders"],
                           "error": "disk full"}
        assert isinstance(payload["time"], str) and payload["time"].endswith("Z")
        assert abs(time.time() - time.mktime(time.strptime(payload["time"][:19], "%Y-%m-%dT%H:%M:%S"))
                   + time.timezone) < 60


def test_fields_cannot_replace_the_envelope_and_anything_serialises(receiver: Callable[..., Receiver]) -> None:
    r = receiver()
    n = Notifier([r.url], backoff=0.01)
    n.send("custom", "hello", text="overridden?", event="no", host="x", when=time, count=3)
    n.close(5)
    [payload] = r.delivered()
    assert (payload["text"], payload["event"], payload["host"], payload["count"]) == ("hello", "custom", n.host, 3)
    assert "module 'time'" in str(payload["when"])


def test_5xx_is_retried_until_delivered_once(receiver: Callable[..., Receiver], logs: Records) -> None:
    r = receiver([500, 503])
    n = Notifier([r.url], backoff=0.01)
    n.emit(notify.recovery_failed("r1", "point_in_time", "no base"))
    n.close(5)
    assert [s for s, _, _ in r.posts] == [500, 503, 200]
    assert [p["event"] for p in r.delivered()] == ["recovery_failed"]
    failures = logs.messages(logging.WARNING)
    assert len(failures) == 2 and "HTTP 500" in failures[0] and "attempt 1 of 6" in failures[0]
    # The URL's path and query hold the secret: logs show scheme, host and port only.
    port = r.url.split(":")[2].split("/")[0]
    assert all(f"http://127.0.0.1:{port}/..." in m and "secret" not in m for m in logs.messages())


def test_429_is_retried_and_4xx_is_not(receiver: Callable[..., Receiver], logs: Records) -> None:
    r = receiver([429, 400])
    n = Notifier([r.url], backoff=0.01)
    n.send("a", "first")
    n.send("b", "second")
    n.close(5)
    assert [(s, p["event"]) for s, _, p in r.posts] == [(429, "a"), (400, "a"), (200, "b")]
    [gave_up] = logs.messages(logging.ERROR)
    assert "notification a to" in gave_up and "given up after 2 attempt(s): HTTP 400" in gave_up
    assert "(not retried)" in gave_up


def test_gives_up_after_max_attempts(receiver: Callable[..., Receiver], logs: Records) -> None:
    r = receiver([500] * 10)
    n = Notifier([r.url], backoff=0.01, max_attempts=3)
    n.send("a", "text")
    n.close(5)
    assert len(r.posts) == 3
    [gave_up] = logs.messages(logging.ERROR)
    assert "given up after 3 attempt(s): HTTP 500" in gave_up and "not retried" not in gave_up


def test_unreachable_url_never_blocks_send(receiver: Callable[..., Receiver], logs: Records) -> None:
    good = receiver()
    n = Notifier([closed_port_url(), good.url], backoff=30, max_attempts=3)
    started = time.monotonic()
    n.send("a", "text")
    assert time.monotonic() - started < 0.5
    # send has returned and the worker is provably still at it: attempt 1 failed, a 30 s wait follows.
    wait_for("the first failed attempt", lambda: any("attempt 1 of 3" in m for m in logs.messages()))
    assert "given up" not in " ".join(logs.messages())
    # The other URL has its own worker: the dead endpoint does not hold it up.
    wait_for("delivery to the working URL", lambda: good.delivered())
    started = time.monotonic()
    n.close(0.2)
    assert time.monotonic() - started < 2
    assert any("1 notification(s) to http://127.0.0.1:" in m and "not delivered: stopping" in m
               for m in logs.messages(logging.WARNING))
    assert not any("secret" in m for m in logs.messages())


def test_a_timeout_is_retried(receiver: Callable[..., Receiver], logs: Records) -> None:
    r = receiver()
    r.hold.clear()  # the first request hangs past the client's timeout
    n = Notifier([r.url], backoff=0.01, timeout=0.5)
    n.send("a", "text")
    wait_for("the first attempt to time out", lambda: any("attempt 1 of 6): timed out" in m for m in logs.messages()))
    r.hold.set()
    n.close(5)
    # The timed-out request reached the receiver all the same: a duplicate, the one way to get one.
    assert [p["event"] for p in r.delivered()] == ["a", "a"]


def test_a_full_queue_drops_the_oldest_waiting(receiver: Callable[..., Receiver], logs: Records) -> None:
    r = receiver()
    r.hold.clear()
    n = Notifier([r.url], backoff=0.01, queue_size=3)
    n.send("e0", "in flight")
    wait_for("the first request to arrive", lambda: n._channels[0].busy and not n._channels[0].queue)
    started = time.monotonic()
    for i in range(1, 6):
        n.send(f"e{i}", "waiting")
    assert time.monotonic() - started < 0.5
    drops = [m for m in logs.messages(logging.WARNING) if "full" in m]
    assert len(drops) == 2 and "dropped the oldest (e1)" in drops[0] and "(e2)" in drops[1]
    r.hold.set()
    n.close(5)
    assert [p["event"] for p in r.delivered()] == ["e0", "e3", "e4", "e5"]


def test_no_urls_is_a_no_op() -> None:
    threads = threading.active_count()
    n = Notifier([])
    n.send("a", "text", x=1)
    n.emit(notify.verify_failed(["x"]))
    n.close(0)
    assert threading.active_count() == threads


def test_redact() -> None:
    assert notify.redact("https://hooks.slack.com/services/T0/B0/secret") == "https://hooks.slack.com/..."
    assert notify.redact("http://user:pw@[::1]:8080/x?token=1") == "http://[::1]:8080/..."


def test_basic_auth_from_the_url() -> None:
    assert notify.basic_auth("https://hooks.slack.com/services/T0/B0/x") == ("https://hooks.slack.com/services/T0/B0/x",
                                                                             None)
    assert notify.basic_auth("http://us%40er:p%3Aw%2F@[::1]:8080/x?t=1") == ("http://[::1]:8080/x?t=1",
                                                                             "Basic dXNAZXI6cDp3Lw==")
    assert notify.basic_auth("http://user@host/x") == ("http://host/x", "Basic dXNlcjo=")


def test_event_texts() -> None:
    e = notify.verify_failed([f"problem {i}" for i in range(60)])
    assert e.text == "pgtape: verification found 60 problem(s): problem 0; problem 1; problem 2; and 57 more"
    assert e.fields["problem_count"] == 60 and len(e.fields["problems"]) == notify.MAX_PROBLEMS  # type: ignore[arg-type]
    e = notify.recovery_completed("r7", "point_in_time", "2026-12-02T16:00:00Z", ["public.payments"])
    assert e.text == "pgtape: recovery r7 (point_in_time) of public.payments at 2026-12-02T16:00:00Z completed"
    assert notify.capture_disconnected(125, "connection refused").text == \
        "pgtape: capture disconnected for 2m05s: connection refused"
    assert notify.lag_high(3700, 300).text == "pgtape: capture lag 1h01m is over the bound of 5m00s"
    assert {e for e in notify.EVENTS} == {"snapshot_failed", "capture_disconnected", "capture_reconnected",
                                         "lag_high", "lag_recovered", "verify_failed", "recovery_completed",
                                         "recovery_failed"}


class Sent(Notifier):
    """A Notifier that keeps what it is given: Watch's logic, without HTTP."""

    def __init__(self) -> None:
        super().__init__([])
        self.sent: list[tuple[str, dict[str, object]]] = []

    def send(self, event: str, text: str, /, **fields: object) -> None:
        self.sent.append((event, fields))

    def take(self) -> list[str]:
        events, self.sent = [e for e, _ in self.sent], []
        return events


def test_watch_disconnection_edges() -> None:
    n = Sent()
    w = Watch(n, disconnected_after=60, max_lag=300)
    w.observe(True, 1, now=0)
    w.observe(False, None, now=10, error="server closed the connection")
    w.observe(False, None, now=70)  # down for exactly 60 s: not longer than the bound yet
    assert n.take() == []
    w.observe(False, None, now=75)
    assert n.sent == [("capture_disconnected", {"disconnected_seconds": 65, "error": "server closed the connection"})]
    n.take()
    for t in (80, 200, 5000):
        w.observe(False, None, now=t, error="connection refused")
    assert n.take() == []  # no repeats while it lasts
    w.observe(True, 2, now=5010)
    assert n.sent == [("capture_reconnected", {"disconnected_seconds": 5000})]
    n.take()
    w.observe(True, 2, now=5020)
    # A short outage, under the bound, notifies nothing either way.
    w.observe(False, None, now=5030)
    w.observe(False, None, now=5080)
    w.observe(True, 2, now=5085)
    assert n.take() == []
    # A new outage counts from its own start, with its own error.
    w.observe(False, None, now=6000, error="timeout")
    w.observe(False, None, now=6061)
    assert n.sent == [("capture_disconnected", {"disconnected_seconds": 61, "error": "timeout"})]


def test_watch_disconnected_from_the_start() -> None:
    n = Sent()
    w = Watch(n, disconnected_after=60, max_lag=300)
    w.observe(False, None, now=1000)
    w.observe(False, None, now=1061)
    assert n.take() == ["capture_disconnected"]


def test_watch_lag_edges() -> None:
    n = Sent()
    w = Watch(n, disconnected_after=60, max_lag=300)
    w.observe(True, 300, now=0)
    assert n.take() == []
    w.observe(True, 301, now=5)
    assert n.sent == [("lag_high", {"lag_seconds": 301, "max_lag_seconds": 300})]
    n.take()
    for lag in (900, None, 290, 241):  # no repeats; unknown lag and a lag just under the bound change nothing
        w.observe(True, lag, now=10)
    assert n.take() == []
    w.observe(True, 240, now=15)
    assert n.sent == [("lag_recovered", {"lag_seconds": 240, "max_lag_seconds": 300})]
    n.take()
    w.observe(True, 250, now=20)
    w.observe(True, 400, now=25)
    assert n.take() == ["lag_high"]
