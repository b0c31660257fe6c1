"""Prometheus metrics: what the gate counts, and the listener `sessiongate serve` opens for them.

`Metrics` is one gate's metric families (prometheus_client, in a registry of its own). It is an
observer (`finish(scope, record)`: decision and reason, gate overhead and total latency, the
proxy's own error answers, relay routes), and the components that count outside a request
record hold it as their `metrics` attribute, wired by gate.py / middleware.py: the
`Authenticator` (whoami calls by outcome and their latency, whoami calls in flight, requests
shed by `ory.max_inflight`, cache hits and misses), the `Gatekeeper` (cache hits on its quick
path), the `SessionCache` (evictions by cause; its size is read at each flush) and the
`UpstreamProxy` (WebSockets open). Without metrics those attributes are None and cost one test.

Speed: the per-request figures (the request counter, both latency histograms, cache hits and
misses) go into plain Python numbers on the request's task and reach prometheus_client at most
`FLUSH_INTERVAL` later, from a timer on the event loop. In multiprocess mode each
prometheus_client update is a locked write into a memory-mapped file (here ~2 us a counter,
~5 us a histogram: ~14 us a request, 7% of the gate's time); buffered, a request pays ~1 us.
Rarer events (whoami calls, evictions, sheds, WebSockets) go straight in.

Label values come from fixed sets only (observe.DECISIONS / REASONS via `observe.bounded`, the
relay's route names, the tuples below): nothing a client sends can add a series.

Several workers: `sessiongate serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before
any worker starts (prometheus_client picks its storage when it is first imported), each worker
writes its values there, and the serve process' `MetricsListener` sums them; gauges are
`livesum` (the live workers' values), the files of dead workers are dropped at each scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import Receive, Scope, Send

from sessiongate.observe import RequestRecord, bounded

log = logging.getLogger("sessiongate.metrics")

#: prometheus_client's multiprocess directory (set by `sessiongate serve` for its workers).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Longest a per-request figure waits in the worker before prometheus_client has it.
FLUSH_INTERVAL = 1.0
OTHER = "other"

#: `sessiongate_kratos_whoami_total{outcome}`: Kratos' status, or why there was none.
WHOAMI_OUTCOMES = ("200", "401", "403", "429", "5xx", OTHER, "timeout", "connection_error")
#: `sessiongate_cache_evictions_total{cause}`.
EVICTION_CAUSES = (
    "expired",  # its deadline passed (cache.ttl, the session's expiry, Ory-Session-Cache-For)
    "capacity",  # pushed out by cache.max_entries (least recently used first)
    "session_revoked",  # a revocation of that session (the relay, gate.cache, Redis stream)
    "identity_revoked",  # every session of an identity revoked
    "cleared",  # cache.clear() (the shared mode does it when it loses Redis)
    "refresh",  # dropped so the next request asks Kratos again (admin extend, strict mode)
)
#: `sessiongate_upstream_errors_total{status}`: the proxy's own answer instead of the app's.
UPSTREAM_ERRORS = ("408", "429", "502", "503", "504")
#: `sessiongate_relay_requests_total{route}` for a relay path no route of this method matched.
UNMATCHED_ROUTE = "unmatched"
#: (decision, reason) pairs created at start, so dashboards show 0 rather than no data.
COMMON_REQUESTS = (
    ("allowed", ""),
    ("public", ""),
    ("denied", "no_credential"),
    ("denied", "invalid_session"),
    ("redirected", "no_credential"),
    ("redirected", "invalid_session"),
    ("unavailable", "kratos_unavailable"),
    ("unavailable", "rate_limited"),
    ("unavailable", "overloaded"),
    ("bad_request", "malformed_credential"),
)

OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
WHOAMI_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_STATUS_OUTCOME = {200: "200", 401: "401", 403: "403", 429: "429"}


def whoami_outcome(status: int) -> str:
    """The `outcome` label of a whoami call Kratos answered with `status`."""
    outcome = _STATUS_OUTCOME.get(status)
    if outcome is not None:
        return outcome
    return "5xx" if 500 <= status <= 599 else OTHER


class _Pending:
    """A counter child and what was counted since the last flush."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0

    def flush(self) -> None:
        n = self.n
        if n:
            self.n = 0
            self.child.inc(n)


class _PendingHistogram:
    """A histogram and the observations since the last flush, counted per bucket (`finish`
    adds to `counts` and `total` itself)."""

    __slots__ = ("bounds", "counts", "histogram", "total")

    def __init__(self, histogram: Histogram, bounds: tuple[float, ...]) -> None:
        self.histogram = histogram
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: +Inf
        self.total = 0.0
        # prometheus_client has no call for "n observations in bucket i"; its histogram keeps
        # one value per bucket (`_buckets`, not cumulative, +Inf last) and the sum (`_sum`)
        if len(histogram._buckets) != len(self.counts):  # pragma: no cover (a library change)
            raise RuntimeError("prometheus_client's Histogram changed: update metrics.py")

    def flush(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        buckets = self.histogram._buckets
        for i, n in enumerate(counts):
            if n:
                counts[i] = 0
                buckets[i].inc(n)
        total, self.total = self.total, 0.0
        self.histogram._sum.inc(total)


class Metrics:
    """One gate's metrics; `finish` is its observer hook, the other methods the components'."""

    def __init__(
        self, *, relay_routes: Iterable[str] = (), flush_interval: float = FLUSH_INTERVAL
    ) -> None:
        self.registry = registry = CollectorRegistry()
        self.flush_interval = flush_interval
        self.relay_routes = frozenset(relay_routes) | {UNMATCHED_ROUTE}
        self.requests = Counter(
            "sessiongate_requests",
            "Requests and WebSocket handshakes answered, by the gate's decision and its reason.",
            ["decision", "reason"],
            registry=registry,
        )
        self.overhead = Histogram(
            "sessiongate_request_overhead_seconds",
            "HTTP requests: the gate's own time, from the request's arrival to the call to the "
            "app (the whole answer when the app was not called).",
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "sessiongate_request_duration_seconds",
            "HTTP requests: from arrival to the end of the answer, the app's time included.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.whoami_calls = Counter(
            "sessiongate_kratos_whoami",
            "whoami calls sent to Kratos, by outcome: its status (200, 401, 403, 429, 5xx, "
            "other) or timeout (ory.timeout) or connection_error.",
            ["outcome"],
            registry=registry,
        )
        self.whoami_seconds = Histogram(
            "sessiongate_kratos_whoami_duration_seconds",
            "Time of each whoami call to Kratos, failures included.",
            buckets=WHOAMI_BUCKETS,
            registry=registry,
        )
        self.whoami_in_flight = Gauge(
            "sessiongate_kratos_whoami_in_flight",
            "whoami calls to Kratos in progress.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "sessiongate_requests_shed",
            "Requests refused with 503 because ory.max_inflight whoami calls were in flight.",
            registry=registry,
        )
        self.cache_hits = Counter(
            "sessiongate_cache_hits",
            "Credentials answered from the session cache (valid sessions and remembered 401s).",
            registry=registry,
        )
        self.cache_misses = Counter(
            "sessiongate_cache_misses",
            "Credentials the session cache could not answer (a whoami call, or a shared one).",
            registry=registry,
        )
        self.cache_entries = Gauge(
            "sessiongate_cache_entries",
            "Entries in the session cache (valid sessions and remembered 401s).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.evictions = Counter(
            "sessiongate_cache_evictions",
            "Entries removed from the session cache, by cause.",
            ["cause"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "sessiongate_upstream_errors",
            "The proxy's own answers instead of the app's: 502 unreachable, 504 timeout, 408 "
            "request body too slow, 429 per-client limit, 503 no free upstream connection.",
            ["status"],
            registry=registry,
        )
        self.relay_requests = Counter(
            "sessiongate_relay_requests",
            "Session relay calls (Kratos' session routes on the gate), by route and status.",
            ["route", "status"],
            registry=registry,
        )
        self.websockets_open = Gauge(
            "sessiongate_websockets_open",
            "WebSocket connections the gate relays or has admitted, open now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # labelled children, bound once: the hot path looks them up in a dict
        self._requests: dict[tuple[str, str], _Pending] = {}
        self._upstream: dict[str, _Pending] = {}
        self._relay: dict[tuple[str, int], _Pending] = {}
        self._buffered: list[_Pending | _PendingHistogram] = []
        for decision, reason in COMMON_REQUESTS:
            self._request_pending(decision, reason)
        for status in UPSTREAM_ERRORS:
            self._upstream_pending(status)
        self._whoami = {o: self.whoami_calls.labels(o) for o in WHOAMI_OUTCOMES}
        self._evictions = {c: self.evictions.labels(c) for c in EVICTION_CAUSES}
        self._overhead = self._buffer(_PendingHistogram(self.overhead, OVERHEAD_BUCKETS))
        self._duration = self._buffer(_PendingHistogram(self.duration, DURATION_BUCKETS))
        self._hits = self._buffer(_Pending(self.cache_hits))
        self._misses = self._buffer(_Pending(self.cache_misses))
        #: the session cache's size, read at each flush (gate.py sets it)
        self.cache_size: Callable[[], int] | None = None
        self._entries = -1
        self._armed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def _buffer(self, pending: Any) -> Any:
        self._buffered.append(pending)
        return pending

    def _request_pending(self, decision: str, reason: str) -> _Pending:
        key = (decision, reason)
        pending = self._requests.get(key)
        if pending is None:
            pending = self._requests[key] = self._buffer(
                _Pending(self.requests.labels(decision, reason))
            )
        return pending

    def _upstream_pending(self, status: str) -> _Pending:
        if status not in UPSTREAM_ERRORS:
            status = OTHER
        pending = self._upstream.get(status)
        if pending is None:
            pending = self._upstream[status] = self._buffer(
                _Pending(self.upstream_errors.labels(status))
            )
        return pending

    def _relay_pending(self, route: str, status: int) -> _Pending:
        route = route if route in self.relay_routes else OTHER
        status = status if 100 <= status <= 599 else 0  # 0: no answer was sent
        key = (route, status)
        pending = self._relay.get(key)
        if pending is None:
            pending = self._relay[key] = self._buffer(
                _Pending(self.relay_requests.labels(route, str(status)))
            )
        return pending

    # -- the observer ---------------------------------------------------------------------
    def finish(self, scope: Scope, record: RequestRecord) -> None:
        pending = self._requests.get((record.decision, record.reason))
        if pending is None:
            # only bounded pairs are ever keys: anything else is counted as `unknown`
            pending = self._request_pending(*bounded(record))
        pending.n += 1
        if record.kind == "http":  # a WebSocket's duration is the socket's life
            # record.overhead / .duration and the histograms' updates, inlined: this runs for
            # every request (perf_counter never goes back: no negative spans). A bucket's `le`
            # is inclusive: the first bound >= the value (bisect_left)
            started, finished = record.started, record.finished
            overhead = (record.upstream_at or finished) - started
            duration = finished - started
            histogram = self._overhead
            histogram.counts[bisect_left(histogram.bounds, overhead)] += 1
            histogram.total += overhead
            histogram = self._duration
            histogram.counts[bisect_left(histogram.bounds, duration)] += 1
            histogram.total += duration
        if record.upstream_error:
            self._upstream_pending(record.upstream_error).n += 1
        if record.decision == "relay":
            self._relay_pending(record.route, record.status).n += 1
        if not self._armed:
            self._arm()

    # -- the components' events -----------------------------------------------------------
    def cache_hit(self) -> None:
        self._hits.n += 1

    def cache_miss(self) -> None:
        self._misses.n += 1

    def whoami_started(self) -> None:
        self.whoami_in_flight.inc()

    def whoami_done(self, outcome: str, seconds: float) -> None:
        """A whoami call ended: `outcome` from WHOAMI_OUTCOMES, "" when it was abandoned."""
        self.whoami_in_flight.dec()
        if outcome:
            self._whoami.get(outcome, self._whoami[OTHER]).inc()
            self.whoami_seconds.observe(seconds)

    def request_shed(self) -> None:
        self.shed.inc()

    def evicted(self, cause: str, count: int = 1) -> None:
        if count > 0:
            self._evictions[cause].inc(count)
            if not self._armed:
                self._arm()  # the cache's size follows at the next flush

    def websocket_opened(self) -> None:
        self.websockets_open.inc()

    def websocket_closed(self) -> None:
        self.websockets_open.dec()

    # -- flushing -------------------------------------------------------------------------
    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # an app's thread (gate.cache.evict_* from sync code): no timer
            return
        if self._loop is not None and loop is not self._loop and not self._loop.is_closed():
            return  # another loop's thread: the gate's own loop flushes (the buffers are its)
        self._armed = True
        self._loop = loop
        self._timer = loop.call_later(self.flush_interval, self._tick)

    def _tick(self) -> None:
        self._armed = False
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Hand what was counted since the last flush to prometheus_client (on the loop
        that counts, or with it stopped: the buffers are not locked)."""
        for pending in self._buffered:
            pending.flush()
        size = self.cache_size
        if size is not None:
            entries = size()
            if entries != self._entries:
                self._entries = entries
                self.cache_entries.set(entries)

    def sync(self, timeout: float = 2.0) -> None:
        """`flush` from any thread: on the gate's loop when it runs elsewhere."""
        loop = self._loop
        here = None
        with contextlib.suppress(RuntimeError):
            here = asyncio.get_running_loop()
        if loop is None or loop is here:
            self.flush()
            return
        if loop.is_closed() or not loop.is_running():
            self._armed, self._timer = False, None  # that loop's timer will never fire
            self.flush()
            return
        done = threading.Event()

        def run() -> None:
            try:
                self.flush()
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # closed meanwhile
            self.flush()
            return
        done.wait(timeout)

    def exposition(self) -> bytes:
        """This gate's page in Prometheus' text format (what a scrape of it returns)."""
        self.sync()
        return generate_latest(self.registry)

    def close(self) -> None:
        """At shutdown: the last figures out; in a multiprocess worker, its gauges retired."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = False
        self.flush()
        directory = os.environ.get(MULTIPROC_ENV)
        if directory and os.path.isdir(directory):
            mark_process_dead(os.getpid(), directory)

    def asgi_app(self) -> Callable[[Scope, Receive, Send], Any]:
        """The page as an ASGI app, for middleware mode's host to mount (`metrics_app`).

        Under a host with several worker processes and PROMETHEUS_MULTIPROC_DIR set, it
        answers for all of them (each worker's figures as of its last flush)."""
        registry: Collector = self.registry
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            registry = multiprocess_registry(directory)
        page = make_asgi_app(registry)  # prometheus_client's: formats, gzip, `name[]`

        async def metrics_app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            self.flush()  # this process' figures up to now
            await page(scope, receive, send)

        return metrics_app


# -- several processes ----------------------------------------------------------------------
_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _LiveWorkers:
    """prometheus_client's MultiProcessCollector, after retiring the live gauges of workers
    that died without saying so (a crash, a kill): their WebSockets and cache went with them.
    Counters and histograms of dead workers stay in the sums (totals never go down)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.inner = MultiProcessCollector(None, directory)

    def collect(self) -> Iterable[Any]:
        with contextlib.suppress(OSError):
            for name in os.listdir(self.directory):
                match = _LIVE_FILE.match(name)
                if match and not _alive(int(match.group(1))):
                    mark_process_dead(int(match.group(1)), self.directory)
        return self.inner.collect()  # type: ignore[no-any-return]


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry summing every process that writes into `directory`."""
    registry = CollectorRegistry()
    registry.register(_LiveWorkers(directory))  # type: ignore[arg-type]
    return registry


class MetricsListenerError(Exception):
    """The metrics port could not be bound: the message names `metrics.port`."""


class MetricsListener:
    """The one listener of a `sessiongate serve` (in its own process: the servers' supervisor,
    or uvicorn's only process), on a thread; it serves the sum of all workers."""

    def __init__(self, host: str, port: int, directory: str) -> None:
        try:
            self.server, self.thread = start_http_server(
                port, addr=host, registry=multiprocess_registry(directory)
            )
        except OSError as exc:
            raise MetricsListenerError(
                f"metrics.port: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                f"choose a free port, or 0 for any"
            ) from exc
        self.host = host
        self.port = int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
