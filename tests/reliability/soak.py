"""Soak run: the gate as a real server under churning sessions, every admission checked.

This module owns the soak harness of the reliability suite (issue 6). Everything runs on
127.0.0.1: the Kratos fake (`FakeKratosServer`) and a recording upstream app as uvicorn threads
in this process, the gate as a separate `sessiongate serve --config FILE` process (granian:
a supervisor and one worker) with a short `cache.ttl`. For the duration:

* 500 sessions (100 identities x 5 slots) are used by concurrent httpx clients (32 workers by
  default), each request with one credential (X-Session-Token, cookie or Bearer, chosen at
  random), a few with junk tokens, and a quarter of them probing recently killed sessions;
* a churn task kills ~20 sessions a second and logs a new one in for the slot: revocations,
  expiries and deletions made directly at Kratos, revocations through the gate's relay
  (`DELETE /sessions/{id}` by a sibling session of the same identity, and
  `DELETE /self-service/logout/api`), plus sessions that expire on their own;
* the upstream app records every admitted request: the gate's `X-Session-Id`/`X-User-Id`, the
  session the client meant, the client's send time and the app's arrival time (monotonic, one
  clock for the whole process).

The shared topology (`--shared`, issue 12) runs the same load against two gate processes that
share one real `redis-server` (`shared.redis_url`, `shared.degraded_ttl: 1s`, consistency
`eventual`, one `SESSIONGATE_SECRET`): one with `listen.workers: 2` (granian shares the port),
one with a single worker; `cache.ttl` is 4 s there, well past the 1 s bound, so a process that
missed a revocation would admit it long enough to be caught. Each request goes to a gate picked
at random, each revocation through the relay too, so most revocations are judged at a process
other than the one that made them. Besides, the soak asks for the session at every worker of
every gate just before each revocation through a gate (so each process holds it in its cache)
and again 1.6 s after the revoking call returned, just past the bound (`/soak/warm/...` and
`/soak/probe/...`, new connections): a process that did not hear of the revocation admits it
then. After the warm-up, faults are injected into Redis one after the other, each for 3 s
with 4 s to recover (`redis_faults.py`): stalled (SIGSTOP/SIGCONT), killed and restarted empty,
slow (`DEBUG SLEEP 0.4` back to back, past `shared.timeout`) and answering errors
(`maxmemory 1`: writes answer OOM); each fault's window, what showed it took effect and each
gate worker's `/health/ready` view of Redis during it are in the report.

The checker compares every admitted request with the fake's truth at that moment:

* a session revoked, expired or deleted *at Kratos* at time t may be admitted until
  t + `cache.ttl` + tolerance (the documented cache window), in either topology;
* a session that reached its own `expires_at` may be admitted until `expires_at` + tolerance
  (the cache never outlives a session);
* a session revoked *through the gate* must be refused for every request sent after the
  revoke call returned; in the shared topology (where another process may be asked) for every
  request sent later than 1 s after it returned while Redis is healthy (issue 12's bound), or,
  when a fault window extended by 1 s of reconnection overlaps [revoke sent, returned + 1 s],
  later than returned + max(1 s + `shared.degraded_ttl`, `cache.ttl`) (the README: a
  revocation that could not be appended within `shared.timeout` has the bound `cache.ttl`);
  plus the tolerance;
* the gate's `X-Session-Id` must be the session whose credential was sent; junk is never let in.

The gate decides somewhere between the client's send time and the app's arrival time. A request
that the app saw after the bound is WRONGLY ADMITTED when it was also sent after the bound (its
decision was certainly late); one sent before the bound and delivered after it is counted as
"delivered late" (the gate may have decided in time and the loaded machine delayed the
forwarding), and reported with the forwarding latency distribution. Requests for live sessions
refused with 401 are counted as "wrongly refused" (false logouts).

The gate's RSS (its largest process: the granian worker) is sampled every second; the run fails
when the end value exceeds 1.10 x the value after the warm-up (the first 20% of the duration).
In the shared topology each gate's RSS is the sum over its processes (supervisor and workers),
and the run fails when any gate's end value exceeds 1.10 x its warm-up value, or when a gate is
not connected to Redis again at the end.

Run the full 10-minute soak (about 11 minutes with start-up and shutdown), one gate or shared:

    python tests/reliability/soak.py --duration 600
    python tests/reliability/soak.py --duration 600 --shared   # cache.ttl 4 s

`tests/reliability/test_soak.py` runs each for 60 s and 50 s in the default suite. Exit status:
0 when no request was wrongly admitted and the RSS stayed within bounds, 1 otherwise. To see the
checker catch a gate that breaks the rules, give the gate a longer TTL than the checker assumes,
or two workers (a revocation through one worker leaves the other's cache stale, as documented);
in the shared topology, give the second gate (index 1; `N:` sets a setting on gate N only)
another Redis key prefix, so the two gates never hear each other's revocations:

    python tests/reliability/soak.py --duration 15 --gate-set cache.ttl=6
    python tests/reliability/soak.py --duration 15 --gate-set listen.workers=2
    python tests/reliability/soak.py --duration 40 --shared --gate-set 1:shared.prefix=other
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from redis_faults import KINDS as FAULT_KINDS
from redis_faults import RedisFaults
from starlette.types import Receive, Scope, Send

from sessiongate.testing import CreatedSession, FakeKratosServer, UvicornThread

INF = math.inf
STARTUP_TIMEOUT = 30.0
#: cache.ttl in the shared topology: well past the 1 s bound + tolerance, so a process that
#: missed a revocation keeps admitting it long enough to be caught
SHARED_TTL = 4.0
MAX_BACKGROUND = 200  # shared topology: revocations and visits under way at once, at most
WHOAMI = ("GET", "/sessions/whoami")
WORKER_HEADER = "x-sessiongate-worker"  # with SESSIONGATE_TEST_TAG_WORKER: the worker's pid
#: log lines of the shared mode that show a gate noticed Redis trouble: (name, phrase)
LOG_PHRASES = (
    ("unreachable", "unreachable ("),
    ("stream gap", "has a gap"),
    ("append late", "not appended within"),
    ("append failing", "cannot append revocations"),
    ("shared cache down", "shared session cache unavailable"),
)
KINDS_AT_KRATOS = ("kratos_revoke", "kratos_expire", "kratos_delete")
#: How a killed session dies: (kind, weight). Natural expiries come on top of these.
CHURN_WEIGHTS = (
    ("kratos_revoke", 25),
    ("kratos_expire", 15),
    ("kratos_delete", 10),
    ("gate_revoke", 30),
    ("gate_logout", 20),
)


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 600.0
    sessions: int = 500
    sessions_per_identity: int = 5
    workers: int = 32
    ttl: float = 2.0  # the gate's cache.ttl
    tolerance: float = 0.5
    churn_per_second: float = 20.0
    short_lived_share: float = 0.15  # new sessions with a 2-10 s lifespan (natural expiry)
    dead_probe_share: float = 0.25  # requests that probe recently killed sessions
    junk_share: float = 0.02
    warmup_fraction: float = 0.2
    rss_limit: float = 1.10
    seed: int | None = None
    #: extra gate settings, merged section by section (checker self-tests: a longer cache.ttl
    #: than the checker assumes, or `listen.workers: 2`, must produce wrong admissions)
    gate_settings: dict[str, Any] = field(default_factory=dict)
    #: settings for one gate only (by index, after `gate_settings`): in the shared topology,
    #: e.g. {1: {"shared": {"prefix": "other"}}} cuts gate 1 off the revocations
    gate_overrides: dict[int, dict[str, Any]] = field(default_factory=dict)
    # -- the shared topology (issue 12) ----------------------------------------------------------
    shared: bool = False
    degraded_ttl: float = 1.0  # the gates' shared.degraded_ttl
    propagation: float = 1.0  # the bound while Redis is healthy (issue 12)
    reconnect: float = 1.0  # after a fault ends, Redis still counts as unhealthy this long
    faults: tuple[str, ...] = ("stall", "kill", "slow", "errors")
    fault_length: float = 3.0
    fault_recovery: float = 4.0  # between the end of a fault and the start of the next

    @property
    def linger(self) -> float:
        """How long clients keep probing a killed session: past its whole window."""
        return self.ttl + self.tolerance + 3.0

    @property
    def fault_delay(self) -> float:
        """A revocation through a gate while Redis is not healthy: its bound after the call
        returned (1 s + degraded_ttl, or cache.ttl when it could not be appended)."""
        return max(self.propagation + self.degraded_ttl, self.ttl)


@dataclass(slots=True)
class Tracked:
    """One session as the soak knows it; all times are `time.monotonic()` of this process."""

    created: CreatedSession
    slot: int
    expires: float  # the instant of its `expires_at` at Kratos
    kind: str = ""  # how it died ("" while alive)
    dead_at: float = INF  # when Kratos stopped accepting it (kratos_* and gate_* kinds)
    gate_started: float = INF  # a revocation through the gate: call sent ...
    gate_returned: float = INF  # ... and answered 2xx
    gate: int = -1  # ... by this gate (index) ...
    worker: str = ""  # ... and this worker's pid (shared topology)

    def earliest_death(self) -> float:
        """Before this instant Kratos certainly still accepted the session."""
        return min(self.expires, self.dead_at, self.gate_started)

    def window_bound(self, ttl: float, tolerance: float) -> tuple[float, str]:
        """The last instant Kratos' truth lets the gate admit this session, and the rule."""
        bounds = [(self.expires + tolerance, "expires_at")]
        if self.dead_at < INF:
            bounds.append((self.dead_at + ttl + tolerance, f"{self.kind} + ttl"))
        return min(bounds)

    def admit_bound(
        self, ttl: float, tolerance: float, shared: tuple[float, str] | None = None
    ) -> tuple[float, str]:
        """The window bound, or the return of a revocation through the gate if earlier: at
        once with one gate process; `shared` = (delay, why) after it with several."""
        window = self.window_bound(ttl, tolerance)
        if shared is None:
            if self.gate_returned < window[0]:
                return self.gate_returned, f"{self.kind} returned"
            return window
        delay, why = shared
        bound = self.gate_returned + delay + tolerance
        if bound <= window[0]:
            return bound, f"{self.kind} returned + {delay:g} s ({why})"
        return window


@dataclass
class Summary:
    duration: float
    ttl: float
    tolerance: float
    requests: int = 0
    admitted: int = 0  # 200s the clients got
    app_records: int = 0  # requests the app saw
    refused: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    logins: int = 0
    wrongly_admitted: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    delivered_late: int = 0
    wrongly_refused: int = 0
    refused_examples: list[str] = field(default_factory=list)
    probes_after_window: int = 0  # requests sent for a session past its bound
    probes_after_window_refused: int = 0
    forward_latency_p50: float = 0.0  # app arrival - client send, admitted requests
    forward_latency_p99: float = 0.0
    forward_latency_max: float = 0.0
    forward_latency_max_sent: float = 0.0  # when that request was sent (+s)
    whoami_calls: int = 0
    rss_warmup: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    gate_alive_at_end: bool = True
    wall_seconds: float = 0.0
    rss_limit: float = 1.10
    # -- the shared topology ----------------------------------------------------------------
    shared: bool = False
    degraded_ttl: float = 0.0
    gates: list[str] = field(default_factory=list)  # "gate 0 (2 workers)", ...
    gate_rss: list[dict[str, int]] = field(default_factory=list)  # warmup/end/peak per gate
    gates_alive: list[bool] = field(default_factory=list)
    #: per gate, each worker's shared.redis from /health/ready at the end ("connected")
    redis_at_end: list[list[str]] = field(default_factory=list)
    #: per gate, how many of its log lines name each Redis trouble
    gate_log: list[dict[str, int]] = field(default_factory=list)
    revokes_at: Counter[str] = field(default_factory=Counter)  # revocations through gate N
    faults: list[dict[str, Any]] = field(default_factory=list)  # kind, start, end (+s), note
    probes_other_process: int = 0  # probes past the bound at a process that did not revoke
    probes_other_process_refused: int = 0

    @property
    def rss_ratio(self) -> float:
        return self.rss_end / self.rss_warmup if self.rss_warmup else INF

    def gate_rss_ratio(self, gate: int) -> float:
        rss = self.gate_rss[gate]
        return rss["end"] / rss["warmup"] if rss["warmup"] else INF

    def failures(self) -> list[str]:
        out = []
        if self.wrongly_admitted:
            out.append(f"{self.wrongly_admitted} request(s) wrongly admitted")
        if self.rss_ratio > self.rss_limit:
            out.append(
                f"gate RSS grew {self.rss_ratio:.3f}x after warm-up (limit {self.rss_limit}x)"
            )
        for n, name in enumerate(self.gates):
            if self.gate_rss_ratio(n) > self.rss_limit:
                out.append(
                    f"{name} RSS grew {self.gate_rss_ratio(n):.3f}x after warm-up "
                    f"(limit {self.rss_limit}x)"
                )
            if n < len(self.redis_at_end) and set(self.redis_at_end[n]) != {"connected"}:
                out.append(f"{name} not connected to Redis at the end: {self.redis_at_end[n]}")
        if not self.gate_alive_at_end:
            out.append("a gate process died during the run")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def report(self) -> str:
        mib = 1024 * 1024
        refused = ", ".join(f"{k}: {v}" for k, v in self.refused.most_common()) or "none"
        errors = ", ".join(f"{k}: {v}" for k, v in self.errors.most_common()) or "none"
        kills = ", ".join(f"{k}: {v}" for k, v in sorted(self.kills.items())) or "none"
        rate = self.requests / self.duration if self.duration else 0.0
        lines = [
            f"soak: {self.duration:.0f} s (wall {self.wall_seconds:.1f} s), cache.ttl "
            f"{self.ttl:g} s, tolerance {self.tolerance:g} s",
        ]
        if self.shared:
            lines.append(
                f"shared topology     {', '.join(self.gates)}; one Redis, "
                f"shared.degraded_ttl {self.degraded_ttl:g} s"
            )
        lines += [
            f"requests            {self.requests} ({rate:.0f}/s)",
            f"admitted            {self.admitted} (app saw {self.app_records})",
            f"refused             {sum(self.refused.values())} ({refused})",
            f"transport errors    {sum(self.errors.values())} ({errors})",
            f"sessions killed     {sum(self.kills.values())} ({kills}); logins {self.logins}",
            f"probes past window  {self.probes_after_window} "
            f"(refused {self.probes_after_window_refused})",
        ]
        if self.shared:
            revokes = ", ".join(f"gate {k}: {v}" for k, v in sorted(self.revokes_at.items()))
            lines += [
                f"  at another process than the revoking one: {self.probes_other_process} "
                f"(refused {self.probes_other_process_refused})",
                f"gate revocations by gate: {revokes or 'none'}",
            ]
            for fault in self.faults:
                states = ", ".join(fault["states"]) or "-"
                lines.append(
                    f"fault {fault['kind']:<7} +{fault['start']:.1f} s .. +{fault['end']:.1f} s "
                    f"({fault['note']}; gates during it: {states})"
                )
        lines += [
            f"WRONGLY ADMITTED    {self.wrongly_admitted}",
            f"delivered late      {self.delivered_late} (sent inside the window, seen after)",
            f"wrongly refused     {self.wrongly_refused} (401 for a live session)",
            f"forward latency     p50 {self.forward_latency_p50 * 1000:.1f} ms, p99 "
            f"{self.forward_latency_p99 * 1000:.1f} ms, max "
            f"{self.forward_latency_max * 1000:.1f} ms (sent "
            f"+{self.forward_latency_max_sent:.1f} s)",
            f"whoami calls        {self.whoami_calls}",
            f"{'gates RSS (sum)' if self.shared else 'gate RSS':<20}warm-up "
            f"{self.rss_warmup / mib:.1f} MiB, end "
            f"{self.rss_end / mib:.1f} MiB ({self.rss_ratio:.3f}x), peak "
            f"{self.rss_peak / mib:.1f} MiB",
        ]
        for n, name in enumerate(self.gates):
            rss = self.gate_rss[n]
            log = ", ".join(f"{k}: {v}" for k, v in self.gate_log[n].items() if v) or "none"
            lines += [
                f"  {name}: warm-up {rss['warmup'] / mib:.1f} MiB, end {rss['end'] / mib:.1f} "
                f"MiB ({self.gate_rss_ratio(n):.3f}x), peak {rss['peak'] / mib:.1f} MiB; "
                f"Redis at the end: {', '.join(self.redis_at_end[n]) or '-'}",
                f"    log lines: {log}",
            ]
        lines += [f"  wrong: {e}" for e in self.wrong_examples]
        lines += [f"  refused: {e}" for e in self.refused_examples]
        failures = self.failures()
        lines.append("FAIL: " + "; ".join(failures) if failures else "PASS")
        return "\n".join(lines)


# --- the protected app ------------------------------------------------------------------------


Record = tuple[float, str, str, str, float, str, str]


class RecordingApp:
    """Answers 200 to everything and records (arrival, gate's session, client's session, ...)."""

    def __init__(self) -> None:
        # (arrival, x-session-id, x-user-id, x-soak-sid, x-soak-sent, x-soak-gate, path);
        # appended by uvicorn's thread
        self.records: list[Record] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen = time.monotonic()
        headers = dict(scope["headers"])
        try:
            sent = float(headers.get(b"x-soak-sent", b"nan"))
        except ValueError:
            sent = math.nan
        self.records.append(
            (
                seen,
                headers.get(b"x-session-id", b"").decode("latin-1"),
                headers.get(b"x-user-id", b"").decode("latin-1"),
                headers.get(b"x-soak-sid", b"").decode("latin-1"),
                sent,
                headers.get(b"x-soak-gate", b"").decode("latin-1"),
                scope["path"],
            )
        )
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})


# --- the gate process -------------------------------------------------------------------------


def sessiongate_script() -> str:
    beside = Path(sys.executable).with_name("sessiongate")
    if beside.is_file():
        return str(beside)
    found = shutil.which("sessiongate")
    if found is None:
        raise RuntimeError("the sessiongate command is not installed")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GateProcess:
    """`sessiongate serve --config FILE` in a subprocess; stopped (with its workers) on exit."""

    def __init__(
        self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.env = env or {}  # on top of this process' environment minus SESSIONGATE_*
        self.workers = int(config["listen"].get("workers", 1))
        self.shared = bool((config.get("shared") or {}).get("redis_url"))
        self.port = int(config["listen"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "gate.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / "gate.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._known_children: dict[int, psutil.Process] = {}

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SESSIONGATE_") and k != "ORY_API_KEY"
        }
        env.update(self.env)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sessiongate_script(), "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gate exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/health/alive", timeout=1).status_code == 200:
                    self.processes()  # remember the workers, to stop them whatever happens
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gate did not answer /health/alive in {STARTUP_TIMEOUT:.0f} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        """The supervisor and its children (granian's worker), remembered for `stop`."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in found[1:]:
            self._known_children.setdefault(p.pid, p)
        return found

    def rss(self) -> int:
        """The largest RSS among the gate's processes: the worker's."""
        best = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                best = max(best, p.memory_info().rss)
        return best

    def rss_total(self) -> int:
        """The RSS of all the gate's processes (supervisor and workers)."""
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def redis_states(self, within: float = 5.0) -> dict[str, str]:
        """Each worker's `shared.redis` in /health/ready (needs SESSIONGATE_TEST_TAG_WORKER):
        worker pid -> state. New connections until every worker answered (the kernel picks
        one), or `within` seconds."""
        states: dict[str, str] = {}
        deadline = time.monotonic() + within
        while len(states) < self.workers and time.monotonic() < deadline:
            try:
                r = httpx.get(
                    self.url + "/health/ready", headers={"Connection": "close"}, timeout=2
                )
                states[r.headers.get(WORKER_HEADER, "?")] = r.json()["shared"]["redis"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                states.setdefault("?", type(exc).__name__)
                time.sleep(0.05)
        return states

    def wait_connected(self, within: float) -> None:
        """Until every worker follows the revocation stream."""
        deadline = time.monotonic() + within
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.redis_states(within=2.0)
            if len(states) == self.workers and set(states.values()) == {"connected"}:
                return
            time.sleep(0.1)
        raise RuntimeError(f"gate {self.url}: workers not connected to Redis: {states}")

    def log_counts(self) -> dict[str, int]:
        """How many log lines name each kind of Redis trouble."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        return {name: text.count(phrase) for name, phrase in LOG_PHRASES}

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # workers this run started and that outlived their supervisor: end them by pid
        for child in self._known_children.values():
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
                    child.wait(timeout=5)


def merged(settings: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`settings` with `extra` merged section by section."""
    out = dict(settings)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


@dataclass
class Servers:
    kratos: FakeKratosServer
    app: RecordingApp
    gates: list[GateProcess]
    faults: RedisFaults | None = None  # the shared topology's Redis


@contextlib.contextmanager
def servers(workdir: Path, cfg: SoakConfig) -> Iterator[Servers]:
    """The Kratos fake, the app, Redis (shared topology) and the gate process(es)."""
    kratos = FakeKratosServer()
    app = RecordingApp()
    upstream = UvicornThread(app)
    gates: list[GateProcess] = []
    faults: RedisFaults | None = None
    try:
        kratos.start()
        upstream.start()
        base: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": 0, "workers": 1},
            "ory": {
                "public_url": kratos.public_url,
                "admin_url": kratos.admin_url,
                "timeout": "5s",
            },
            "upstream": {"url": upstream.url, "timeout": 10, "connect_timeout": 2},
            "cache": {"ttl": cfg.ttl},
            "access": {"login_url": kratos.public_url + "/self-service/login/browser"},
            "sessions_api": {"enabled": True},
            "metrics": {"port": 0},  # several gates at once: each its own metrics port
            "log": {"level": "warning", "access": False},  # a soak: millions of lines
        }
        env: dict[str, str] = {}
        workers = [1]
        if cfg.shared:
            faults = RedisFaults(workdir / "redis")
            base["shared"] = {"redis_url": faults.start(), "degraded_ttl": cfg.degraded_ttl}
            # one secret for the fleet; worker tags tell the soak which process answered
            env = {
                "SESSIONGATE_SECRET": "soak-" + secrets.token_hex(24),
                "SESSIONGATE_TEST_TAG_WORKER": "1",
            }
            workers = [2, 1]
        for n, count in enumerate(workers):
            settings = merged(base, {"listen": {"port": free_port(), "workers": count}})
            settings = merged(merged(settings, cfg.gate_settings), cfg.gate_overrides.get(n, {}))
            here = workdir / f"gate{n}" if cfg.shared else workdir
            here.mkdir(exist_ok=True)
            gate = GateProcess(here, settings, env)
            gates.append(gate)
            gate.start()
        for gate in gates:
            if gate.shared:
                gate.wait_connected(within=STARTUP_TIMEOUT)
        yield Servers(kratos, app, gates, faults)
    finally:
        for gate in gates:
            gate.stop()
        if faults is not None:
            faults.close()
        upstream.stop()
        kratos.stop()


# --- the soak ---------------------------------------------------------------------------------


class Soak:
    def __init__(
        self,
        cfg: SoakConfig,
        kratos: FakeKratosServer,
        app: RecordingApp,
        gates: list[GateProcess],
        faults: RedisFaults | None = None,
    ) -> None:
        self.cfg = cfg
        self.fake = kratos.fake
        self.app = app
        self.gates = gates
        self.faults = faults
        self.rng = random.Random(cfg.seed)
        self.summary = Summary(cfg.duration, cfg.ttl, cfg.tolerance, rss_limit=cfg.rss_limit)
        if cfg.shared:
            self.summary.shared = True
            self.summary.degraded_ttl = cfg.degraded_ttl
            self.summary.gates = [
                f"gate {n} ({g.workers} worker{'s' if g.workers > 1 else ''})"
                for n, g in enumerate(gates)
            ]
            self.summary.gate_rss = [{"warmup": 0, "end": 0, "peak": 0} for _ in gates]
        # the worker that answered an admitted probe of a dead session, by request path
        self.served_by: dict[str, str] = {}
        self.visits = 0  # shared topology: a revoked session asked at every process (`visit`)
        self.background: set[asyncio.Task[None]] = set()
        self.killing: set[str] = set()  # sessions a churn task is revoking right now
        self.identities = max(1, cfg.sessions // cfg.sessions_per_identity)
        self.emails = [f"soak-{i}@example.com" for i in range(self.identities)]
        self.tracked: dict[str, Tracked] = {}
        self.slots: list[Tracked] = []
        self.lingering: deque[tuple[float, Tracked]] = deque()  # (retire at, session)
        self.latencies = array.array("d")
        self.start = self.deadline = 0.0

    # -- sessions -------------------------------------------------------------------------
    def login(self, slot: int) -> Tracked:
        email = self.emails[slot % self.identities]
        kwargs: dict[str, Any] = {}
        if self.rng.random() < self.cfg.short_lived_share:
            kwargs["expires_in"] = timedelta(seconds=self.rng.uniform(2.0, 10.0))
        created = self.fake.login(email, **kwargs)
        sess = self.fake.session(created.id)
        left = (sess.expires_at - self.fake.clock.now()).total_seconds()
        tracked = Tracked(created, slot, time.monotonic() + left)
        self.tracked[created.id] = tracked
        self.summary.logins += 1
        return tracked

    def bury(self, tracked: Tracked, kind: str) -> None:
        """`tracked` died: clients keep probing it for a while; its slot gets a new login."""
        tracked.kind = kind
        self.summary.kills[kind] += 1
        self.lingering.append((time.monotonic() + self.cfg.linger, tracked))
        if self.slots[tracked.slot] is tracked:
            self.slots[tracked.slot] = self.login(tracked.slot)

    def housekeeping(self) -> None:
        now = time.monotonic()
        for tracked in list(self.slots):
            if tracked.expires <= now:
                self.bury(tracked, "natural")
        while self.lingering and self.lingering[0][0] <= now:
            _, tracked = self.lingering.popleft()
            self.fake.delete_session(tracked.created.id)  # keeps the fake's store bounded

    def siblings(self, tracked: Tracked) -> list[Tracked]:
        """Live sessions of the same identity in other slots (slot % identities = identity)."""
        now = time.monotonic()
        return [
            s
            for s in self.slots
            if s.slot % self.identities == tracked.slot % self.identities
            and s is not tracked
            and s.expires > now + 2.0
        ]

    async def kill_one(self, clients: list[httpx.AsyncClient]) -> None:
        now = time.monotonic()
        tracked = self.slots[self.rng.randrange(len(self.slots))]
        sid = tracked.created.id
        if tracked.expires <= now + 1.0 or sid in self.killing:
            return  # about to expire on its own, or being revoked by another task
        self.killing.add(sid)
        try:
            await self._kill(tracked, clients)
        finally:
            self.killing.discard(sid)

    async def _kill(self, tracked: Tracked, clients: list[httpx.AsyncClient]) -> None:
        kinds, weights = zip(*CHURN_WEIGHTS, strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        sid = tracked.created.id
        if kind in KINDS_AT_KRATOS:
            if kind == "kratos_revoke":
                self.fake.revoke_session(sid)
            elif kind == "kratos_expire":
                self.fake.expire_session(sid)
            else:
                self.fake.delete_session(sid)
            tracked.dead_at = time.monotonic()
            self.bury(tracked, kind)
            return
        siblings = self.siblings(tracked) if kind == "gate_revoke" else []
        if kind == "gate_revoke" and not siblings:
            kind = "gate_logout"
        gate = self.rng.randrange(len(clients)) if len(clients) > 1 else 0
        client = clients[gate]
        if self.cfg.shared:  # every process holds it: the probe below shows who heard of it
            await self.visit(clients, tracked, "warm")
        tracked.gate_started = time.monotonic()
        try:
            if kind == "gate_revoke":
                caller = self.rng.choice(siblings)
                response = await client.delete(
                    f"/sessions/{sid}", headers={"X-Session-Token": caller.created.token}
                )
            else:
                response = await client.request(
                    "DELETE",
                    "/self-service/logout/api",
                    json={"session_token": tracked.created.token},
                )
            status = response.status_code
        except httpx.HTTPError as exc:
            self.summary.errors[f"revoke: {type(exc).__name__}"] += 1
            status = 0
        returned = time.monotonic()
        if 200 <= status < 300 and not self.fake.is_session_active(sid):
            tracked.gate_returned = tracked.dead_at = returned
            tracked.gate, tracked.worker = gate, response.headers.get(WORKER_HEADER, "")
            if self.cfg.shared:
                self.summary.revokes_at[str(gate)] += 1
                later = self.cfg.propagation + self.cfg.tolerance + 0.1
                self.in_background(self.visit(clients, tracked, "probe", later))
            self.bury(tracked, kind)
        elif self.fake.is_session_active(sid):
            tracked.gate_started = INF  # nothing happened: the session lives on
            self.summary.errors[f"{kind} answered {status}"] += 1
        else:  # refused by the gate, yet Kratos revoked it: only Kratos' window applies
            tracked.dead_at = returned
            self.summary.errors[f"{kind} answered {status}"] += 1
            self.bury(tracked, kind + "_unconfirmed")

    async def visit(
        self, clients: list[httpx.AsyncClient], tracked: Tracked, label: str, after: float = 0.0
    ) -> None:
        """Shared topology: ask for `tracked` (same credential) at every worker of every gate,
        on new connections (the kernel picks the worker), `after` seconds from now."""
        if after:
            await asyncio.sleep(after)
        headers = {"X-Session-Token": tracked.created.token, "X-Soak-Sid": tracked.created.id}
        self.visits += 1
        await asyncio.gather(
            *(
                self.ask(clients[n], n, f"/soak/{label}/{self.visits}/{i}", tracked, headers, True)
                for n, gate in enumerate(self.gates)
                for i in range(gate.workers)
            )
        )

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def churn(self, clients: list[httpx.AsyncClient]) -> None:
        interval = 1.0 / self.cfg.churn_per_second
        next_at = time.monotonic()
        while time.monotonic() < self.deadline:
            self.housekeeping()
            if not self.cfg.shared:
                await self.kill_one(clients)
            elif len(self.background) < MAX_BACKGROUND:
                # concurrently: a revocation through a gate waits for its `visit` first
                self.in_background(self.kill_one(clients))
            next_at = max(next_at + interval, time.monotonic() - interval)
            await asyncio.sleep(max(0.0, min(next_at - time.monotonic(), interval)))

    # -- clients --------------------------------------------------------------------------
    def pick(self, rng: random.Random) -> Tracked | None:
        roll = rng.random()
        if roll < self.cfg.junk_share:
            return None
        if roll < self.cfg.junk_share + self.cfg.dead_probe_share and self.lingering:
            return rng.choice(self.lingering)[1]
        return self.slots[rng.randrange(len(self.slots))]

    def credential(self, rng: random.Random, tracked: Tracked | None) -> dict[str, str]:
        if tracked is None:
            token = "ory_st_" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=32))
            return {"X-Session-Token": token, "X-Soak-Sid": "junk"}
        created = tracked.created
        headers = {"X-Soak-Sid": created.id}
        kind = rng.randrange(3)
        if kind == 0:
            headers["X-Session-Token"] = created.token
        elif kind == 1:
            headers["Cookie"] = f"{self.fake.cookie_name}={created.cookie}"
        else:
            headers["Authorization"] = f"Bearer {created.token}"
        return headers

    async def client_worker(self, clients: list[httpx.AsyncClient], seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            tracked = self.pick(rng)
            headers = self.credential(rng, tracked)
            gate = rng.randrange(len(clients)) if len(clients) > 1 else 0
            await self.ask(clients[gate], gate, f"/soak/{seed}/{n}", tracked, headers)

    async def ask(
        self,
        client: httpx.AsyncClient,
        gate: int,
        path: str,
        tracked: Tracked | None,
        headers: dict[str, str],
        new_connection: bool = False,
    ) -> None:
        """One request with `headers` (a credential of `tracked`, None: junk), tallied."""
        summary = self.summary
        headers["Accept"] = "application/json"
        headers["X-Soak-Gate"] = str(gate)
        if new_connection:
            headers["Connection"] = "close"
        sent = time.monotonic()
        headers["X-Soak-Sent"] = repr(sent)
        summary.requests += 1
        try:
            response = await client.get(path, headers=headers)
        except httpx.HTTPError as exc:
            summary.errors[type(exc).__name__] += 1
            return
        received = time.monotonic()
        status = response.status_code
        worker = response.headers.get(WORKER_HEADER, "")
        if status == 200:
            summary.admitted += 1
        else:
            summary.refused[self.reason(response)] += 1
        if tracked is None:
            return
        if status == 200 and tracked.kind and worker:
            self.served_by[path] = worker  # for the checker's examples
        bound, _ = self.bound(tracked)
        if sent > bound:
            summary.probes_after_window += 1
            summary.probes_after_window_refused += status != 200
            if tracked.worker and worker and worker != tracked.worker:
                summary.probes_other_process += 1
                summary.probes_other_process_refused += status != 200
        if status == 401 and received < tracked.earliest_death() - 0.1:
            summary.wrongly_refused += 1
            if len(summary.refused_examples) < 10:
                at = f" by gate {gate} (pid {worker})" if self.cfg.shared else ""
                summary.refused_examples.append(
                    f"session {tracked.created.id} refused 401{at} at "
                    f"+{received - self.start:.3f} s, alive until at least "
                    f"+{tracked.earliest_death() - self.start:.3f} s: {response.text[:200]}"
                )

    def bound(self, tracked: Tracked) -> tuple[float, str]:
        """The last instant `tracked` may be admitted, and the rule (see the module doc)."""
        cfg = self.cfg
        if not cfg.shared or tracked.gate_returned == INF:
            return tracked.admit_bound(cfg.ttl, cfg.tolerance)
        assert self.faults is not None
        faults = self.faults.overlapping(
            tracked.gate_started, tracked.gate_returned + cfg.propagation, cfg.reconnect
        )
        if faults:
            why = "Redis " + "+".join(sorted({w.kind for w in faults}))
            return tracked.admit_bound(cfg.ttl, cfg.tolerance, (cfg.fault_delay, why))
        return tracked.admit_bound(cfg.ttl, cfg.tolerance, (cfg.propagation, "Redis healthy"))

    @staticmethod
    def reason(response: httpx.Response) -> str:
        try:
            reason = str(response.json()["error"]["reason"])
        except (ValueError, KeyError, TypeError):
            reason = response.reason_phrase
        return f"{response.status_code} {reason}"[:100]

    # -- checker --------------------------------------------------------------------------
    def check_records(self, *, settle: float) -> None:
        """Judge every app record older than `settle` seconds; consume it."""
        records = self.app.records
        horizon = time.monotonic() - settle
        count = 0
        total = len(records)
        while count < total and records[count][0] <= horizon:
            self.judge(*records[count])
            count += 1
        del records[:count]  # the app thread only appends: this prefix is ours
        self.summary.app_records += count

    def judge(
        self,
        seen: float,
        session_id: str,
        user_id: str,
        meant: str,
        sent: float,
        gate: str = "",
        path: str = "",
    ) -> None:
        summary = self.summary
        worker = self.served_by.pop(path, "")
        if sent == sent:  # not NaN
            self.latencies.append(seen - sent)
            if seen - sent > summary.forward_latency_max:
                summary.forward_latency_max = seen - sent
                summary.forward_latency_max_sent = sent - self.start
        tracked = self.tracked.get(meant)
        problem = ""
        if tracked is None:
            problem = f"admitted a credential of no session ({meant or 'unmarked'})"
        elif session_id != meant or user_id != tracked.created.identity_id:
            problem = (
                f"X-Session-Id {session_id!r}, X-User-Id {user_id!r} for a credential of "
                f"session {meant} (identity {tracked.created.identity_id})"
            )
        else:
            bound, rule = self.bound(tracked)
            window, _ = tracked.window_bound(self.cfg.ttl, self.cfg.tolerance)
            if sent > bound or (sent != sent and seen > bound):
                problem = (
                    f"session {meant} ({tracked.kind}) admitted: sent "
                    f"+{sent - self.start:.3f} s, seen +{seen - self.start:.3f} s, "
                    f"bound ({rule}) +{bound - self.start:.3f} s; killed at "
                    f"+{tracked.dead_at - self.start:.3f} s, revoke sent "
                    f"+{tracked.gate_started - self.start:.3f} s, returned "
                    f"+{tracked.gate_returned - self.start:.3f} s"
                )
                if self.cfg.shared:
                    problem += (
                        f"; admitted by gate {gate} (pid {worker or '?'}) at {path}, revoked "
                        f"through gate {tracked.gate} (pid {tracked.worker or '-'})"
                    )
            elif seen > window:
                summary.delivered_late += 1
        if problem:
            summary.wrongly_admitted += 1
            if len(summary.wrong_examples) < 20:
                summary.wrong_examples.append(problem)

    async def checker(self) -> None:
        while time.monotonic() < self.deadline:
            await asyncio.sleep(0.5)
            self.check_records(settle=1.0)

    # -- resources ------------------------------------------------------------------------
    def count_whoami(self) -> None:
        requests = self.fake.requests
        n = len(requests)
        self.summary.whoami_calls += sum(1 for r in requests[:n] if r == WHOAMI)
        del requests[:n]  # uvicorn's thread only appends; the list stays bounded

    def rss(self) -> tuple[int, list[int]]:
        """(the value the run is judged on, each gate's): one gate, its largest process (the
        worker); shared topology, each gate's processes summed, and all gates summed."""
        if not self.cfg.shared:
            rss = self.gates[0].rss()
            return rss, [rss]
        each = [gate.rss_total() for gate in self.gates]
        return sum(each), each

    async def sampler(self) -> None:
        summary = self.summary
        warmup_at = self.start + self.cfg.warmup_fraction * self.cfg.duration
        while time.monotonic() < self.deadline:
            await asyncio.sleep(min(1.0, max(0.0, self.deadline - time.monotonic())))
            rss, each = await asyncio.to_thread(self.rss)
            now = time.monotonic()
            summary.rss_samples.append((round(now - self.start, 1), rss))
            summary.rss_peak = max(summary.rss_peak, rss)
            warm = not summary.rss_warmup and now >= warmup_at
            if warm:
                summary.rss_warmup = rss
            for gate_rss, value in zip(summary.gate_rss, each, strict=False):
                gate_rss["peak"] = max(gate_rss["peak"], value)
                if warm:
                    gate_rss["warmup"] = value
            self.count_whoami()
            if not all(gate.alive() for gate in self.gates):
                summary.gate_alive_at_end = False

    # -- Redis faults (shared topology) ---------------------------------------------------
    async def injector(self) -> None:
        """After the warm-up (the RSS reference is taken first), one fault after the other,
        each followed by time to recover, as long as the last one ends well before the end."""
        assert self.faults is not None
        cfg = self.cfg
        kinds = itertools.cycle(cfg.faults)
        at = self.start + cfg.warmup_fraction * cfg.duration + 1.0
        while cfg.faults and at + cfg.fault_length + cfg.fault_recovery <= self.deadline:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            window = await self.faults.inject(next(kinds), cfg.fault_length, self.gate_states)
            at = window.end + cfg.fault_recovery

    async def gate_states(self) -> list[str]:
        """Each gate worker's view of Redis right now ("gate 0/pid: degraded")."""
        out = []
        for n, gate in enumerate(self.gates):
            states = await asyncio.to_thread(gate.redis_states, 1.0)
            out += [f"{n}/{pid}: {state}" for pid, state in sorted(states.items())]
        return out

    def redis_at_end(self, gate: GateProcess, within: float = 5.0) -> list[str]:
        """Each worker's shared.redis at the end, given `within` seconds to reconnect."""
        deadline = time.monotonic() + within
        while True:
            states = gate.redis_states(within=2.0)
            if set(states.values()) == {"connected"} and len(states) == gate.workers:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return [states[pid] for pid in sorted(states)]

    # -- the run --------------------------------------------------------------------------
    async def run(self) -> Summary:
        cfg = self.cfg
        self.slots = [self.login(slot) for slot in range(cfg.sessions)]
        limits = httpx.Limits(
            max_connections=cfg.workers + 4, max_keepalive_connections=cfg.workers
        )
        timeout = httpx.Timeout(15.0)
        async with contextlib.AsyncExitStack() as stack:
            # one client per gate for the load (each request picks a gate), one for revocations
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=gate.url, limits=limits, timeout=timeout)
                )
                for gate in self.gates
            ]
            admin_clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=gate.url, timeout=timeout)
                )
                for gate in self.gates
            ]
            self.start = time.monotonic()
            self.deadline = self.start + cfg.duration
            tasks = [
                asyncio.create_task(self.client_worker(clients, seed=i)) for i in range(cfg.workers)
            ]
            tasks += [
                asyncio.create_task(self.churn(admin_clients)),
                asyncio.create_task(self.checker()),
                asyncio.create_task(self.sampler()),
            ]
            if self.faults is not None:
                tasks.append(asyncio.create_task(self.injector()))
            try:
                await asyncio.gather(*tasks)
            finally:
                tasks += self.background
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        summary = self.summary
        summary.rss_end, each = await asyncio.to_thread(self.rss)
        summary.rss_peak = max(summary.rss_peak, summary.rss_end)
        if not summary.rss_warmup:
            summary.rss_warmup = summary.rss_end
        for gate_rss, value in zip(summary.gate_rss, each, strict=False):
            gate_rss["end"] = value
            gate_rss["peak"] = max(gate_rss["peak"], value)
            gate_rss["warmup"] = gate_rss["warmup"] or value
        summary.gates_alive = [gate.alive() for gate in self.gates]
        summary.gate_alive_at_end = summary.gate_alive_at_end and all(summary.gates_alive)
        if cfg.shared:
            summary.redis_at_end = [
                await asyncio.to_thread(self.redis_at_end, gate) if gate.shared else []
                for gate in self.gates
            ]
            summary.gate_log = [gate.log_counts() for gate in self.gates]
        if self.faults is not None:
            summary.faults = [
                {
                    "kind": w.kind,
                    "start": round(w.start - self.start, 2),
                    "end": round(w.end - self.start, 2),
                    "note": w.note,
                    "states": w.states,
                }
                for w in self.faults.windows
            ]
        self.check_records(settle=-1.0)  # every client has its answer: all records are in
        self.served_by.clear()
        self.count_whoami()
        if self.latencies:
            ordered = sorted(self.latencies)
            summary.forward_latency_p50 = ordered[len(ordered) // 2]
            summary.forward_latency_p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            summary.forward_latency_max = ordered[-1]
        return summary


def run(cfg: SoakConfig, workdir: Path | None = None) -> Summary:
    """Start everything, soak for `cfg.duration` seconds, stop everything, return the summary."""
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        with servers(workdir, cfg) as running:
            soak = Soak(cfg, running.kratos, running.app, running.gates, running.faults)
            summary = asyncio.run(soak.run())
            # a failed run must say why: a dead gate's output, or every gate's log tail when
            # one admitted or refused wrongly (CI keeps nothing but this report)
            wrong = summary.wrongly_admitted or summary.wrongly_refused
            for n, gate in enumerate(running.gates):
                if wrong or not gate.alive():
                    summary.wrong_examples.append(f"gate {n} output: " + gate.output())
    summary.wall_seconds = time.monotonic() - began
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SoakConfig()
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds")
    parser.add_argument("--sessions", type=int, default=defaults.sessions)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="client tasks")
    parser.add_argument(
        "--ttl",
        type=float,
        default=None,
        help=f"the gate's cache.ttl (default {defaults.ttl:g}; {SHARED_TTL:g} with --shared)",
    )
    parser.add_argument("--tolerance", type=float, default=defaults.tolerance)
    parser.add_argument("--churn", type=float, default=defaults.churn_per_second, help="kills/s")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--gate-set",
        action="append",
        default=[],
        metavar="[N:]SECTION.KEY=YAML",
        help="override a gate setting, e.g. cache.ttl=10 (to see the checker catch it); "
        "N: only for gate N of the shared topology (0: two workers, 1: one)",
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="two gates sharing one Redis, with Redis faults injected (issue 12)",
    )
    parser.add_argument(
        "--faults",
        default=",".join(defaults.faults),
        help="the Redis faults, in order and repeated (shared topology; '' for none)",
    )
    parser.add_argument(
        "--degraded-ttl", type=float, default=defaults.degraded_ttl, help="shared.degraded_ttl"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    gate_settings: dict[str, Any] = {}
    gate_overrides: dict[int, dict[str, Any]] = {}
    for item in args.gate_set:
        path, _, raw = item.partition("=")
        target = gate_settings
        gate, colon, rest = path.partition(":")
        if colon:
            target, path = gate_overrides.setdefault(int(gate), {}), rest
        section, _, key = path.partition(".")
        value = yaml.safe_load(raw)
        if key:
            target.setdefault(section, {})[key] = value
        else:
            target[section] = value
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(sorted(unknown))}; known: {FAULT_KINDS}")
    cfg = SoakConfig(
        gate_settings=gate_settings,
        gate_overrides=gate_overrides,
        shared=args.shared,
        faults=faults,
        degraded_ttl=args.degraded_ttl,
        duration=args.duration,
        sessions=args.sessions,
        workers=args.workers,
        ttl=args.ttl if args.ttl is not None else SHARED_TTL if args.shared else defaults.ttl,
        tolerance=args.tolerance,
        churn_per_second=args.churn,
        seed=args.seed,
    )
    summary = run(cfg)
    print(summary.report())
    if args.json is not None:
        data = {k: v for k, v in vars(summary).items()}
        data["ok"] = summary.ok
        args.json.write_text(json.dumps(data, indent=2, default=dict), encoding="utf-8")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
