"""The metrics as deployed: a real Prometheus scrapes `sessiongate serve` with two workers.

The gate runs as users run it (granian, two worker processes, the metrics listener of the
serve process); Prometheus (Debian's `prometheus` package, started here on a free 127.0.0.1
port with a 1 s scrape interval and `deploy/`'s alert rules loaded) scrapes it while the test
sends a known mix of requests on fresh connections, so both workers answer. The totals read
back through Prometheus' HTTP API are exactly what was sent, summed over the workers.
`promtool` checks the page and the alert rules (and runs their unit tests), every query of the
Grafana dashboard runs against that Prometheus, and every metric name `deploy/` uses is one the
gate exports. Without the binaries those tests are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.asyncio.client import connect as ws_connect

from metrics_page import Page
from sessiongate.gate import TAG_WORKER_ENV
from sessiongate.metrics import COMMON_REQUESTS
from test_cli import (  # noqa: F401  (backends: a fixture)
    Backends,
    Running,
    backends,
    clean_env,
    free_port,
    gate_config,
    serve,
    stop_process,
)

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "sessiongate-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "sessiongate-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sessiongate-dashboard.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="Prometheus is not installed (Debian: apt-get install prometheus; scripts/test does)",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian's prometheus package has it; scripts/test does)",
)
METRIC = re.compile(r"\bsessiongate_[a-z0-9_]+\b")


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


def rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


# -- the gate, and Prometheus in front of it -------------------------------------------------
@dataclass
class MetricsGate:
    running: Running
    metrics_url: str


@pytest.fixture
def two_workers(tmp_path: Path, backends: Backends) -> Iterator[MetricsGate]:  # noqa: F811
    port, metrics_port = free_port(), free_port()
    path = gate_config(
        tmp_path,
        backends,
        port,
        listen={"host": "127.0.0.1", "port": port, "workers": 2},
        access={
            "login_url": "http://127.0.0.1:4433/self-service/login/browser",
            "public_paths": ["/health/**", "/public/**"],
        },
        sessions_api={"enabled": True},
        metrics={"port": metrics_port},
    )
    # each answer names the worker process that gave it
    env = clean_env(**{TAG_WORKER_ENV: "1"})
    with serve(tmp_path, ["--config", str(path)], env, port) as running:
        yield MetricsGate(running, f"http://127.0.0.1:{metrics_port}/metrics")


class Prometheus:
    """A Prometheus server of its own, scraping `target` every second, with deploy's rules."""

    def __init__(self, workdir: Path, target: str) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "sessiongate",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready in {seconds}s: {self.log.read_text()[-2000:]}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        body = r.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]

    def by(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        """An instant vector as {label values: value}."""
        return {
            tuple(s["metric"].get(label, "") for label in labels): float(s["value"][1])
            for s in self.query(expr)
        }

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def until(self, expr: str, expected: float, seconds: float = 30.0) -> float:
        """Poll `expr` until it equals `expected` (a scrape and a worker flush away)."""
        deadline = time.monotonic() + seconds
        value = self.scalar(expr)
        while value != expected and time.monotonic() < deadline:
            time.sleep(0.25)
            value = self.scalar(expr)
        return value

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def prometheus(tmp_path: Path, two_workers: MetricsGate) -> Iterator[Prometheus]:
    target = two_workers.metrics_url.removeprefix("http://").removesuffix("/metrics")
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = Prometheus(workdir, target)
    try:
        server.wait_ready()
        # a first scrape before any traffic: rates need a sample from before it
        first = server.until(
            'count(sessiongate_requests_total{decision!="gate"})', len(COMMON_REQUESTS)
        )
        assert first == len(COMMON_REQUESTS)
        yield server
    finally:
        server.stop()


# -- the load -------------------------------------------------------------------------------
@dataclass
class Sent:
    decisions: dict[tuple[str, str], int]
    workers: set[str]  # the worker processes that answered
    alice_workers: set[str]  # those that validated alice's session (one whoami each)
    lookups: int  # credential lookups in the cache (hits + misses)


async def send_mix(gate: Running, backends: Backends) -> Sent:  # noqa: F811
    """A known mix of requests, 16 at a time, each on a new connection (both workers get
    some): allowed, public, denied, redirected, invalid, malformed and relayed."""
    fake = backends.kratos.fake
    alice, bob = fake.login("alice@example.com"), fake.login("bob@example.com")
    plan: list[tuple[tuple[str, str], str, dict[str, str], int]] = []
    token = {"X-Session-Token": alice.token}
    plan += [(("allowed", ""), f"/app/{i}", token, 200) for i in range(120)]
    plan += [(("public", ""), "/public/page", {}, 200)] * 30
    plan += [(("denied", "no_credential"), "/app/x", {}, 401)] * 40
    plan += [(("redirected", "no_credential"), "/app/x", {"Accept": "text/html"}, 303)] * 10
    plan += [
        (("denied", "invalid_session"), "/app/y", {"X-Session-Token": f"ory_st_Unknown{i}"}, 401)
        for i in range(20)
    ]
    malformed = {"X-Session-Token": "x" * 9000}
    plan += [(("bad_request", "malformed_credential"), "/a", malformed, 400)] * 5
    plan += [(("relay", ""), "/sessions/whoami", {"X-Session-Token": bob.token}, 200)] * 15
    limit = asyncio.Semaphore(16)
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
    workers: set[str] = set()
    alice_workers: set[str] = set()
    async with httpx.AsyncClient(base_url=gate.url, timeout=20, limits=limits) as client:

        async def one(decision: tuple[str, str], path: str, headers: dict[str, str], status: int):  # type: ignore[no-untyped-def]
            async with limit:
                r = await client.get(path, headers={**headers, "Connection": "close"})
            assert r.status_code == status, (decision, r.status_code, r.text[:200])
            worker = r.headers["x-sessiongate-worker"]
            workers.add(worker)
            if decision == ("allowed", ""):
                alice_workers.add(worker)

        await asyncio.gather(*(one(*p) for p in plan))
    decisions: dict[tuple[str, str], int] = {}
    for decision, *_ in plan:
        decisions[decision] = decisions.get(decision, 0) + 1
    lookups = decisions[("allowed", "")] + decisions[("denied", "invalid_session")] + 15
    return Sent(decisions, workers, alice_workers, lookups)


@needs_prometheus
@needs_promtool
def test_prometheus_reads_exact_totals_from_two_workers(
    two_workers: MetricsGate,
    prometheus: Prometheus,
    backends: Backends,  # noqa: F811
) -> None:
    sent = asyncio.run(send_mix(two_workers.running, backends))
    assert sent.decisions == {
        ("allowed", ""): 120,
        ("public", ""): 30,
        ("denied", "no_credential"): 40,
        ("redirected", "no_credential"): 10,
        ("denied", "invalid_session"): 20,
        ("bad_request", "malformed_credential"): 5,
        ("relay", ""): 15,
    }
    assert len(sent.workers) == 2, "both workers must answer for the sums to mean anything"
    total = sum(sent.decisions.values())
    assert prometheus.until('sum(sessiongate_requests_total{decision!="gate"})', total) == total

    # requests by decision and reason, summed over both workers' processes
    got = prometheus.by(
        'sum by (decision, reason) (sessiongate_requests_total{decision!="gate"}) > 0',
        "decision",
        "reason",
    )
    assert got == {k: float(v) for k, v in sent.decisions.items()}
    # one whoami per worker that saw alice; one 401 per unknown token; none for the relay
    whoami = prometheus.by("sum by (outcome) (sessiongate_kratos_whoami_total) > 0", "outcome")
    assert whoami == {("200",): len(sent.alice_workers), ("401",): 20.0}
    assert prometheus.scalar("sum(sessiongate_kratos_whoami_duration_seconds_count)") == (
        len(sent.alice_workers) + 20
    )
    relay = prometheus.by(
        "sum by (route, status) (sessiongate_relay_requests_total)", "route", "status"
    )
    assert relay == {("whoami", "200"): 15.0}
    lookups = prometheus.scalar(
        "sum(sessiongate_cache_hits_total) + sum(sessiongate_cache_misses_total)"
    )
    assert lookups == sent.lookups
    assert prometheus.scalar("sum(sessiongate_cache_misses_total)") >= 20
    # every HTTP request in both histograms (the gate's own health probes included)
    every = prometheus.scalar("sum(sessiongate_requests_total)")
    for histogram in ("request_overhead_seconds", "request_duration_seconds"):
        assert prometheus.scalar(f"sum(sessiongate_{histogram}_count)") == every
    assert prometheus.scalar("sum(sessiongate_upstream_errors_total)") == 0
    assert prometheus.scalar("sum(sessiongate_requests_shed_total)") == 0
    assert prometheus.scalar("sum(sessiongate_kratos_whoami_in_flight)") == 0
    assert prometheus.scalar("sum(sessiongate_cache_entries)") >= 1
    # one listener for the serve: Prometheus sees one target, up
    assert prometheus.by("up", "job") == {("sessiongate",): 1.0}

    # the page as scraped passes promtool's checks (format and naming conventions)
    page = httpx.get(two_workers.metrics_url, timeout=5).text
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=page, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # every dashboard query is valid PromQL for this Prometheus, and the main ones have data
    for expr in dashboard_queries():
        if expr.startswith("label_values("):
            continue
        concrete = expr.replace("$job", ".*").replace("$__rate_interval", "1m")
        prometheus.query(concrete)  # asserts status success
    ratio = 'sum(rate(sessiongate_requests_total{decision=~"denied|redirected"}[1m]))'
    assert prometheus.scalar(ratio) > 0
    # the alert rules are loaded and evaluate without error
    deadline = time.monotonic() + 15
    while True:
        groups = httpx.get(prometheus.url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if (rules and all(r.get("lastEvaluation", "0001").startswith("20") for r in rules)) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.25)
    assert len(rules) == len(rule_queries())
    assert {r["health"] for r in rules} == {"ok"}, [r.get("lastError") for r in rules]

    # a WebSocket through the gate is open in one worker: the sum says 1, then 0
    alice = backends.kratos.fake.login("alice@example.com")
    url = two_workers.running.url.replace("http://", "ws://", 1) + "/ws"

    async def while_open() -> float:
        async with ws_connect(url, additional_headers={"X-Session-Token": alice.token}) as ws:
            await ws.recv()
            return await asyncio.to_thread(prometheus.until, "sum(sessiongate_websockets_open)", 1)

    assert asyncio.run(while_open()) == 1
    assert prometheus.until("sum(sessiongate_websockets_open)", 0) == 0


def test_dashboard_and_rules_use_only_exported_metrics(
    tmp_path: Path,
    backends: Backends,  # noqa: F811
) -> None:
    port, metrics_port = free_port(), free_port()
    path = gate_config(
        tmp_path, backends, port, sessions_api={"enabled": True}, metrics={"port": metrics_port}
    )
    alice = backends.kratos.fake.login("alice@example.com")
    with serve(tmp_path, ["--config", str(path)], clean_env(), port) as gate:
        token = {"X-Session-Token": alice.token}
        assert httpx.get(gate.url + "/a", headers=token, timeout=10).status_code == 200
        r = httpx.get(gate.url + "/sessions/whoami", headers=token, timeout=10)
        assert r.status_code == 200
        deadline = time.monotonic() + 10
        while True:  # a worker flush away
            page = Page(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text)
            if page.total("sessiongate_relay_requests_total") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    exported = page.names()
    for source, queries in (("dashboard", dashboard_queries()), ("rules", rule_queries())):
        used = {name for q in queries for name in METRIC.findall(q)}
        assert used, source
        assert used <= exported, (source, sorted(used - exported))
    # and the dashboard covers every family the gate exports
    families = {n for n, t in page.types.items() if n.startswith("sessiongate_")}
    shown = {name for q in dashboard_queries() for name in METRIC.findall(q)}
    missing = {f for f in families if not any(s.startswith(f) for s in shown)}
    assert not missing, missing


@needs_promtool
def test_promtool_accepts_the_alert_rules_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rule_queries())} rules found" in check.stdout
    # each alert fires on the traffic it is about, with its summary; a healthy gate fires none
    unit = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert tested == alerts  # every alert has a case where it fires
