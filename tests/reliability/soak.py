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

The checker compares every admitted request with the fake's truth at that moment:

* a session revoked, expired or deleted *at Kratos* at time t may be admitted until
  t + `cache.ttl` + tolerance (the documented cache window);
* a session that reached its own `expires_at` may be admitted until `expires_at` + tolerance
  (the cache never outlives a session);
* a session revoked *through the gate* must be refused for every request sent after the
  revoke call returned;
* the gate's `X-Session-Id` must be the session whose credential was sent; junk is never let in.

The gate decides somewhere between the client's send time and the app's arrival time. A request
that the app saw after the bound is WRONGLY ADMITTED when it was also sent after the bound (its
decision was certainly late); one sent before the bound and delivered after it is counted as
"delivered late" (the gate may have decided in time and the loaded machine delayed the
forwarding), and reported with the forwarding latency distribution. Requests for live sessions
refused with 401 are counted as "wrongly refused" (false logouts).

The gate's RSS (its largest process: the granian worker) is sampled every second; the run fails
when the end value exceeds 1.10 x the value after the warm-up (the first 20% of the duration).

Run the full 10-minute soak (about 11 minutes with start-up and shutdown):

    python tests/reliability/soak.py --duration 600

`tests/reliability/test_soak.py` runs it for 60 s in the default suite. Exit status: 0 when no
request was wrongly admitted and the RSS stayed within bounds, 1 otherwise. To see the checker
catch a gate that breaks the rules, give the gate a longer TTL than the checker assumes, or two
workers (a revocation through one worker leaves the other's cache stale, as documented):

    python tests/reliability/soak.py --duration 15 --gate-set cache.ttl=6
    python tests/reliability/soak.py --duration 15 --gate-set listen.workers=2
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from starlette.types import Receive, Scope, Send

from sessiongate.testing import CreatedSession, FakeKratosServer, UvicornThread

INF = math.inf
STARTUP_TIMEOUT = 30.0
WHOAMI = ("GET", "/sessions/whoami")
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

    @property
    def linger(self) -> float:
        """How long clients keep probing a killed session: past its whole window."""
        return self.ttl + self.tolerance + 3.0


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

    def earliest_death(self) -> float:
        """Before this instant Kratos certainly still accepted the session."""
        return min(self.expires, self.dead_at, self.gate_started)

    def window_bound(self, ttl: float, tolerance: float) -> tuple[float, str]:
        """The last instant Kratos' truth lets the gate admit this session, and the rule."""
        bounds = [(self.expires + tolerance, "expires_at")]
        if self.dead_at < INF:
            bounds.append((self.dead_at + ttl + tolerance, f"{self.kind} + ttl"))
        return min(bounds)

    def admit_bound(self, ttl: float, tolerance: float) -> tuple[float, str]:
        """The window bound, or the return of a revocation through the gate if earlier."""
        window = self.window_bound(ttl, tolerance)
        if self.gate_returned < window[0]:
            return self.gate_returned, f"{self.kind} returned"
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
    whoami_calls: int = 0
    rss_warmup: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    gate_alive_at_end: bool = True
    wall_seconds: float = 0.0
    rss_limit: float = 1.10

    @property
    def rss_ratio(self) -> float:
        return self.rss_end / self.rss_warmup if self.rss_warmup else INF

    def failures(self) -> list[str]:
        out = []
        if self.wrongly_admitted:
            out.append(f"{self.wrongly_admitted} request(s) wrongly admitted")
        if self.rss_ratio > self.rss_limit:
            out.append(
                f"gate RSS grew {self.rss_ratio:.3f}x after warm-up (limit {self.rss_limit}x)"
            )
        if not self.gate_alive_at_end:
            out.append("the gate process died during the run")
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
            f"requests            {self.requests} ({rate:.0f}/s)",
            f"admitted            {self.admitted} (app saw {self.app_records})",
            f"refused             {sum(self.refused.values())} ({refused})",
            f"transport errors    {sum(self.errors.values())} ({errors})",
            f"sessions killed     {sum(self.kills.values())} ({kills}); logins {self.logins}",
            f"probes past window  {self.probes_after_window} "
            f"(refused {self.probes_after_window_refused})",
            f"WRONGLY ADMITTED    {self.wrongly_admitted}",
            f"delivered late      {self.delivered_late} (sent inside the window, seen after)",
            f"wrongly refused     {self.wrongly_refused} (401 for a live session)",
            f"forward latency     p50 {self.forward_latency_p50 * 1000:.1f} ms, p99 "
            f"{self.forward_latency_p99 * 1000:.1f} ms, max "
            f"{self.forward_latency_max * 1000:.1f} ms",
            f"whoami calls        {self.whoami_calls}",
            f"gate RSS            warm-up {self.rss_warmup / mib:.1f} MiB, end "
            f"{self.rss_end / mib:.1f} MiB ({self.rss_ratio:.3f}x), peak "
            f"{self.rss_peak / mib:.1f} MiB",
        ]
        lines += [f"  wrong: {e}" for e in self.wrong_examples]
        lines += [f"  refused: {e}" for e in self.refused_examples]
        failures = self.failures()
        lines.append("FAIL: " + "; ".join(failures) if failures else "PASS")
        return "\n".join(lines)


# --- the protected app ------------------------------------------------------------------------


class RecordingApp:
    """Answers 200 to everything and records (arrival, gate's session, client's session, ...)."""

    def __init__(self) -> None:
        # (arrival, x-session-id, x-user-id, x-soak-sid, x-soak-sent); appended by uvicorn's thread
        self.records: list[tuple[float, str, str, str, float]] = []

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

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
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


@contextlib.contextmanager
def servers(
    workdir: Path, cfg: SoakConfig
) -> Iterator[tuple[FakeKratosServer, RecordingApp, GateProcess]]:
    kratos = FakeKratosServer()
    app = RecordingApp()
    upstream = UvicornThread(app)
    gate: GateProcess | None = None
    try:
        kratos.start()
        upstream.start()
        port = free_port()
        settings: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": port, "workers": 1},
            "ory": {
                "public_url": kratos.public_url,
                "admin_url": kratos.admin_url,
                "timeout": "5s",
            },
            "upstream": {"url": upstream.url, "timeout": 10, "connect_timeout": 2},
            "cache": {"ttl": cfg.ttl},
            "access": {"login_url": kratos.public_url + "/self-service/login/browser"},
            "sessions_api": {"enabled": True},
            "log_level": "warning",
        }
        for key, value in cfg.gate_settings.items():
            if isinstance(value, dict) and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        gate = GateProcess(workdir, settings)
        gate.start()
        yield kratos, app, gate
    finally:
        if gate is not None:
            gate.stop()
        upstream.stop()
        kratos.stop()


# --- the soak ---------------------------------------------------------------------------------


class Soak:
    def __init__(
        self, cfg: SoakConfig, kratos: FakeKratosServer, app: RecordingApp, gate: GateProcess
    ) -> None:
        self.cfg = cfg
        self.fake = kratos.fake
        self.app = app
        self.gate = gate
        self.rng = random.Random(cfg.seed)
        self.summary = Summary(cfg.duration, cfg.ttl, cfg.tolerance, rss_limit=cfg.rss_limit)
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

    async def kill_one(self, client: httpx.AsyncClient) -> None:
        now = time.monotonic()
        tracked = self.slots[self.rng.randrange(len(self.slots))]
        if tracked.expires <= now + 1.0:
            return  # about to expire on its own
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
            self.bury(tracked, kind)
        elif self.fake.is_session_active(sid):
            tracked.gate_started = INF  # nothing happened: the session lives on
            self.summary.errors[f"{kind} answered {status}"] += 1
        else:  # refused by the gate, yet Kratos revoked it: only Kratos' window applies
            tracked.dead_at = returned
            self.summary.errors[f"{kind} answered {status}"] += 1
            self.bury(tracked, kind + "_unconfirmed")

    async def churn(self, client: httpx.AsyncClient) -> None:
        interval = 1.0 / self.cfg.churn_per_second
        next_at = time.monotonic()
        while time.monotonic() < self.deadline:
            self.housekeeping()
            await self.kill_one(client)
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

    async def client_worker(self, client: httpx.AsyncClient, seed: int) -> None:
        rng = random.Random(seed)
        summary = self.summary
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            tracked = self.pick(rng)
            headers = self.credential(rng, tracked)
            headers["Accept"] = "application/json"
            sent = time.monotonic()
            headers["X-Soak-Sent"] = repr(sent)
            summary.requests += 1
            try:
                response = await client.get(f"/soak/{seed}/{n}", headers=headers)
            except httpx.HTTPError as exc:
                summary.errors[type(exc).__name__] += 1
                continue
            received = time.monotonic()
            status = response.status_code
            if status == 200:
                summary.admitted += 1
            else:
                summary.refused[self.reason(response)] += 1
            if tracked is None:
                continue
            bound, _ = tracked.admit_bound(self.cfg.ttl, self.cfg.tolerance)
            if sent > bound:
                summary.probes_after_window += 1
                summary.probes_after_window_refused += status != 200
            if status == 401 and received < tracked.earliest_death() - 0.1:
                summary.wrongly_refused += 1
                if len(summary.refused_examples) < 10:
                    summary.refused_examples.append(
                        f"session {tracked.created.id} refused 401 at +{received - self.start:.3f}"
                        f" s, alive until at least +{tracked.earliest_death() - self.start:.3f}"
                        f" s: {response.text[:200]}"
                    )

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

    def judge(self, seen: float, session_id: str, user_id: str, meant: str, sent: float) -> None:
        summary = self.summary
        if sent == sent:  # not NaN
            self.latencies.append(seen - sent)
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
            bound, rule = tracked.admit_bound(self.cfg.ttl, self.cfg.tolerance)
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

    async def sampler(self) -> None:
        warmup_at = self.start + self.cfg.warmup_fraction * self.cfg.duration
        while time.monotonic() < self.deadline:
            await asyncio.sleep(min(1.0, max(0.0, self.deadline - time.monotonic())))
            rss = await asyncio.to_thread(self.gate.rss)
            now = time.monotonic()
            self.summary.rss_samples.append((round(now - self.start, 1), rss))
            self.summary.rss_peak = max(self.summary.rss_peak, rss)
            if not self.summary.rss_warmup and now >= warmup_at:
                self.summary.rss_warmup = rss
            self.count_whoami()
            if not self.gate.alive():
                self.summary.gate_alive_at_end = False

    # -- the run --------------------------------------------------------------------------
    async def run(self) -> Summary:
        cfg = self.cfg
        self.slots = [self.login(slot) for slot in range(cfg.sessions)]
        limits = httpx.Limits(
            max_connections=cfg.workers + 4, max_keepalive_connections=cfg.workers
        )
        timeout = httpx.Timeout(15.0)
        async with (
            httpx.AsyncClient(base_url=self.gate.url, limits=limits, timeout=timeout) as client,
            httpx.AsyncClient(base_url=self.gate.url, timeout=timeout) as admin_client,
        ):
            self.start = time.monotonic()
            self.deadline = self.start + cfg.duration
            tasks = [
                asyncio.create_task(self.client_worker(client, seed=i)) for i in range(cfg.workers)
            ]
            tasks += [
                asyncio.create_task(self.churn(admin_client)),
                asyncio.create_task(self.checker()),
                asyncio.create_task(self.sampler()),
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        summary = self.summary
        summary.rss_end = await asyncio.to_thread(self.gate.rss)
        summary.rss_peak = max(summary.rss_peak, summary.rss_end)
        if not summary.rss_warmup:
            summary.rss_warmup = summary.rss_end
        summary.gate_alive_at_end = summary.gate_alive_at_end and self.gate.alive()
        self.check_records(settle=-1.0)  # every client has its answer: all records are in
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
        with servers(workdir, cfg) as (kratos, app, gate):
            soak = Soak(cfg, kratos, app, gate)
            summary = asyncio.run(soak.run())
            if not summary.gate_alive_at_end:
                summary.wrong_examples.append("gate output: " + gate.output())
    summary.wall_seconds = time.monotonic() - began
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SoakConfig()
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds")
    parser.add_argument("--sessions", type=int, default=defaults.sessions)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="client tasks")
    parser.add_argument("--ttl", type=float, default=defaults.ttl, help="the gate's cache.ttl")
    parser.add_argument("--tolerance", type=float, default=defaults.tolerance)
    parser.add_argument("--churn", type=float, default=defaults.churn_per_second, help="kills/s")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--gate-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=YAML",
        help="override a gate setting, e.g. cache.ttl=10 (to see the checker catch it)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    gate_settings: dict[str, Any] = {}
    for item in args.gate_set:
        path, _, raw = item.partition("=")
        section, _, key = path.partition(".")
        value = yaml.safe_load(raw)
        if key:
            gate_settings.setdefault(section, {})[key] = value
        else:
            gate_settings[section] = value
    cfg = SoakConfig(
        gate_settings=gate_settings,
        duration=args.duration,
        sessions=args.sessions,
        workers=args.workers,
        ttl=args.ttl,
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
