"""Webhook notifications: a JSON POST with a Slack-compatible `text` when something needs attention.

Best effort and never in the caller's way: `Notifier.send` only queues (bounded; when full the
oldest waiting notification is dropped) and returns; one daemon thread per URL posts, retrying
connection errors, timeouts, HTTP 5xx and 429 with exponential backoff plus jitter, so a dead
endpoint delays neither the caller nor the other URLs. Webhook URLs embed secrets: logs name only
scheme, host and port. Credentials in a URL (`https://user:password@host/...`) are sent as HTTP Basic
authentication.

`Watch` turns the service's periodic look at capture into edge-triggered events: one notification
when a bad state begins (disconnected too long, lag too high), one when it ends.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import unquote, urlsplit, urlunsplit

from pgtape.log import utc_time

log = logging.getLogger(__name__)

SNAPSHOT_FAILED = "snapshot_failed"
CAPTURE_DISCONNECTED = "capture_disconnected"
CAPTURE_RECONNECTED = "capture_reconnected"
LAG_HIGH = "lag_high"
LAG_RECOVERED = "lag_recovered"
VERIFY_FAILED = "verify_failed"
RECOVERY_COMPLETED = "recovery_completed"
RECOVERY_FAILED = "recovery_failed"
EVENTS = (SNAPSHOT_FAILED, CAPTURE_DISCONNECTED, CAPTURE_RECONNECTED, LAG_HIGH, LAG_RECOVERED,
          VERIFY_FAILED, RECOVERY_COMPLETED, RECOVERY_FAILED)

# A retry never waits longer than this, whatever the backoff or a 429's Retry-After asks.
MAX_DELAY = 60.0
# Lag must fall below this fraction of the bound before lag_recovered: a lag hovering at the bound
# would otherwise notify on every crossing.
LAG_RECOVER_FRACTION = 0.8
# verify_failed names at most this many problems (the count is always exact).
MAX_PROBLEMS = 50


def redact(url: str) -> str:
    """`https://hooks.slack.com/services/T0/B0/secret` -> `https://hooks.slack.com/...`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{'[' + host + ']' if ':' in host else host}{port}/..."


def basic_auth(url: str) -> tuple[str, str | None]:
    """A URL with credentials (`https://user:password@host/path`) -> the URL without them and the
    `Authorization: Basic` header they stand for (urllib would take them for part of the host name)."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url, None
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return url, None  # posting fails and says so, naming only redact(url)
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    return (urlunsplit(parts._replace(netloc=host)),
            "Basic " + base64.b64encode(credentials).decode())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a GET without the body: a webhook that redirects is
    # misconfigured, so its 3xx is reported as a (not retried) failure instead.
    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, msg: str,
                         headers: Message, newurl: str) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class _Channel:
    """One URL: its queue and the thread that delivers it."""

    def __init__(self, url: str, timeout: float, max_attempts: int, backoff: float, queue_size: int) -> None:
        self.url, self.name = url, redact(url)
        self.post_url, self.auth = basic_auth(url)
        self.timeout, self.max_attempts, self.backoff = timeout, max(1, max_attempts), backoff
        self.queue: deque[tuple[str, bytes]] = deque()
        self.queue_size = max(1, queue_size)
        self.cond = threading.Condition()
        self.closing = False
        self.busy = False
        self.abort = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"pgtape-notify {self.name}", daemon=True)
        self.thread.start()

    def put(self, event: str, body: bytes) -> None:
        with self.cond:
            if self.closing:
                return
            dropped = self.queue.popleft()[0] if len(self.queue) >= self.queue_size else None
            self.queue.append((event, body))
            self.cond.notify()
        if dropped is not None:
            log.warning("notification queue for %s is full (%d waiting): dropped the oldest (%s)",
                        self.name, self.queue_size, dropped)

    def close(self, deadline: float) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            self.abort.set()  # ends the retry wait; a request in flight ends with the process
            with self.cond:
                lost = len(self.queue) + self.busy
                self.queue.clear()
            if lost:
                log.warning("%d notification(s) to %s not delivered: stopping", lost, self.name)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                event, body = self.queue.popleft()
                self.busy = True
            try:
                self._deliver(event, body)
            except Exception:  # the thread must outlive any surprise, or later notifications pile up
                log.exception("notification %s to %s failed unexpectedly", event, self.name)
            with self.cond:
                self.busy = False

    def _deliver(self, event: str, body: bytes) -> None:
        for attempt in range(1, self.max_attempts + 1):
            error, retry, retry_after = self._post(body)
            if error is None:
                log.debug("notification %s delivered to %s", event, self.name)
                return
            if not retry or attempt == self.max_attempts:
                log.error("notification %s to %s given up after %d attempt(s): %s%s", event, self.name,
                          attempt, error, "" if retry else " (not retried)")
                return
            delay = min(MAX_DELAY, max(self.backoff * 2 ** (attempt - 1) * random.uniform(1.0, 1.5),
                                       retry_after or 0.0))
            log.warning("notification %s to %s failed (attempt %d of %d): %s; retrying in %.1fs",
                        event, self.name, attempt, self.max_attempts, error, delay)
            if self.abort.wait(delay):
                return

    def _post(self, body: bytes) -> tuple[str | None, bool, float | None]:
        """One POST -> (error or None, whether to retry, the server's Retry-After in seconds)."""
        headers = {"Content-Type": "application/json", "User-Agent": "pgtape"}
        if self.auth is not None:
            headers["Authorization"] = self.auth
        request = urllib.request.Request(self.post_url, data=body, method="POST", headers=headers)
        try:
            with _opener.open(request, timeout=self.timeout) as response:
                response.read()
            return None, False, None
        except urllib.error.HTTPError as e:
            with e:
                retry = e.code >= 500 or e.code == 429
                try:
                    retry_after = float(e.headers.get("Retry-After", ""))
                except (TypeError, ValueError):
                    retry_after = None
                return f"HTTP {e.code} {e.reason}", retry, retry_after
        except urllib.error.URLError as e:
            return self._redacted(str(e.reason)), True, None
        except Exception as e:  # timeouts, resets, malformed responses: worth another try
            return self._redacted(str(e) or type(e).__name__), True, None

    def _redacted(self, text: str) -> str:
        return text.replace(self.url, self.name).replace(self.post_url, self.name)


class Notifier:
    """Posts notifications to webhook URLs in the background; with no URLs every call is a no-op."""

    def __init__(self, urls: Sequence[str], *, timeout: float = 5, max_attempts: int = 6, backoff: float = 1.0,
                 queue_size: int = 1000) -> None:
        self.host = socket.gethostname()
        self._channels = [_Channel(u, timeout, max_attempts, backoff, queue_size) for u in dict.fromkeys(urls)]

    def send(self, event: str, text: str, /, **fields: object) -> None:
        """Queue `event` for every URL and return at once; never raises."""
        if not self._channels:
            return
        try:
            payload: dict[str, object] = {"text": text, "event": event, "time": utc_time(time.time()),
                                          "host": self.host}
            payload.update((k, v) for k, v in fields.items() if k not in payload)
            body = json.dumps(payload, default=str).encode()
            for channel in self._channels:
                channel.put(event, body)
        except Exception as e:  # a notification is never worth failing the caller for
            log.warning("notification %s not sent: %s", event, e)

    def emit(self, event: Event) -> None:
        self.send(event.name, event.text, **event.fields)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within `timeout` seconds (all URLs together), then stop."""
        deadline = time.monotonic() + timeout
        for channel in self._channels:
            channel.close(deadline)


@dataclass(frozen=True)
class Event:
    name: str
    text: str
    fields: dict[str, object] = field(default_factory=dict)


def duration(seconds: float) -> str:
    """125 -> `2m05s`: how long, for a human."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def snapshot_failed(snapshot_id: str, tables: Sequence[str], error: str) -> Event:
    return Event(SNAPSHOT_FAILED, f"pgtape: snapshot {snapshot_id} of {', '.join(tables)} failed: {error}",
                 {"snapshot_id": snapshot_id, "tables": list(tables), "error": error})


def capture_disconnected(seconds: float, error: str | None) -> Event:
    return Event(CAPTURE_DISCONNECTED, f"pgtape: capture disconnected for {duration(seconds)}"
                 + (f": {error}" if error else ""), {"disconnected_seconds": round(seconds, 3), "error": error})


def capture_reconnected(seconds: float) -> Event:
    return Event(CAPTURE_RECONNECTED, f"pgtape: capture reconnected after {duration(seconds)} disconnected",
                 {"disconnected_seconds": round(seconds, 3)})


def lag_high(lag_seconds: float, max_lag: float) -> Event:
    return Event(LAG_HIGH, f"pgtape: capture lag {duration(lag_seconds)} is over the bound of {duration(max_lag)}",
                 {"lag_seconds": round(lag_seconds, 3), "max_lag_seconds": max_lag})


def lag_recovered(lag_seconds: float, max_lag: float) -> Event:
    return Event(LAG_RECOVERED, f"pgtape: capture lag back to {duration(lag_seconds)} "
                 f"(bound {duration(max_lag)})", {"lag_seconds": round(lag_seconds, 3), "max_lag_seconds": max_lag})


def verify_failed(problems: Sequence[str]) -> Event:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return Event(VERIFY_FAILED, f"pgtape: verification found {len(problems)} problem(s): {shown}",
                 {"problem_count": len(problems), "problems": list(problems[:MAX_PROBLEMS])})


def recovery_completed(recovery_id: str, recovery_type: str, target: str | None, tables: Sequence[str]) -> Event:
    to = f" at {target}" if target else ""
    return Event(RECOVERY_COMPLETED,
                 f"pgtape: recovery {recovery_id} ({recovery_type}) of {', '.join(tables)}{to} completed",
                 {"recovery_id": recovery_id, "recovery_type": recovery_type, "target": target,
                  "tables": list(tables)})


def recovery_failed(recovery_id: str, recovery_type: str, error: str) -> Event:
    return Event(RECOVERY_FAILED, f"pgtape: recovery {recovery_id} ({recovery_type}) failed: {error}",
                 {"recovery_id": recovery_id, "recovery_type": recovery_type, "error": error})


class Watch:
    """Edge-triggered capture health: call `observe` every few seconds; it notifies on changes only."""

    def __init__(self, notifier: Notifier, disconnected_after: float, max_lag: float) -> None:
        self.notifier, self.disconnected_after, self.max_lag = notifier, disconnected_after, max_lag
        self.down_since: float | None = None
        self.down_reported = False
        self.last_error: str | None = None
        self.lag_reported = False

    def observe(self, connected: bool, lag_seconds: float | None, now: float, error: str | None = None) -> None:
        """`now`: any monotonic clock in seconds. `lag_seconds` None: unknown, the lag state stays as it was."""
        if connected:
            if self.down_reported and self.down_since is not None:
                self.notifier.emit(capture_reconnected(now - self.down_since))
            self.down_since, self.down_reported, self.last_error = None, False, None
        else:
            self.last_error = error or self.last_error
            if self.down_since is None:
                self.down_since = now
            if not self.down_reported and now - self.down_since > self.disconnected_after:
                self.notifier.emit(capture_disconnected(now - self.down_since, self.last_error))
                self.down_reported = True
        if lag_seconds is None:
            return
        if not self.lag_reported and lag_seconds > self.max_lag:
            self.notifier.emit(lag_high(lag_seconds, self.max_lag))
            self.lag_reported = True
        elif self.lag_reported and lag_seconds <= self.max_lag * LAG_RECOVER_FRACTION:
            self.notifier.emit(lag_recovered(lag_seconds, self.max_lag))
            self.lag_reported = False
