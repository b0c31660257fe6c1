"""The `sessiongate` command as a user runs it: `check-config` and `serve`, in subprocesses."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from apps import EchoApp
from metrics_page import Page
from resources import raw_request
from sessiongate.testing import FakeKratosServer, UvicornThread

SCRIPT = str(Path(sys.executable).with_name("sessiongate"))
STARTUP_TIMEOUT = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test process' environment minus anything that configures sessiongate."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SESSIONGATE_") and k != "ORY_API_KEY"
    }
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else clean_env(),
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_script_exists():
    assert Path(SCRIPT).is_file(), SCRIPT


# --- check-config ----------------------------------------------------------------------------


def test_check_config_good_file(tmp_path):
    path = write_config(
        tmp_path / "good.yaml",
        {
            "public_url": "https://app.example.com",
            "ory": {"public_url": "https://project.oryapis.com", "timeout": "3s"},
            "upstream": {"url": "http://127.0.0.1:8080"},
            "cache": {"ttl": "5m"},
            "access": {"public_paths": ["/health/**", "/assets/*.css", "/api/*/docs"]},
        },
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert result.stderr == ""  # no warnings either


def test_check_config_warns_about_host_origin_and_one_segment_globs(tmp_path):
    path = write_config(
        tmp_path / "warn.yaml",
        {"access": {"public_paths": ["/assets/*", "/static/**", "/*", "/docs/*/x"]}},
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3, result.stderr
    assert "public_url" in warnings[0]
    assert "Host header" in warnings[0]
    assert "'/assets/*'" in warnings[1]
    assert "'/assets/**'" in warnings[1]
    assert "'/*'" in warnings[2]
    assert "'/**'" in warnings[2]


@pytest.mark.parametrize(
    "config",
    [
        {"access": {"login_url": "/login"}},
        {"access": {"login_url": "http://127.0.0.1:4455/self-service/login/browser"}},
        {
            "public_url": "https://app.example.com",
            "access": {"login_url": "https://app.example.com/in"},
        },
    ],
)
def test_check_config_refuses_a_login_url_behind_the_gate(tmp_path, config):
    path = write_config(tmp_path / "loop.yaml", config)
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2, result.stdout
    assert "access.login_url" in result.stderr
    assert "forever" in result.stderr
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert "access.login_url" in result.stderr


def test_check_config_without_a_file_checks_the_defaults():
    result = run_cli("check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_check_config_bad_file_lists_every_problem_with_its_key_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        """
ory:
  public_url: ftp://kratos
  api_key: ory_pat_secret
upstream:
  foo: 1
cache:
  ttl: 5 minutes
identity_headers:
  Host: identity.id
access:
  allowed_return_to: [https://app.example.com/path]
""",
        encoding="utf-8",
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "configuration OK" not in result.stdout
    err = result.stderr
    assert "6 problem(s)" in err, err
    for key in (
        "ory.public_url:",
        "ory.api_key:",
        "upstream.foo:",
        "cache.ttl:",
        "identity_headers:",
        "access.allowed_return_to:",
    ):
        assert key in err, (key, err)
    assert "ORY_API_KEY" in err
    assert "ory_pat_secret" not in err + result.stdout


def test_check_config_env_override_is_checked_too(tmp_path):
    path = write_config(tmp_path / "good.yaml", {"cache": {"ttl": 5}})
    result = run_cli(
        "check-config",
        "--config",
        str(path),
        env=clean_env(SESSIONGATE_CACHE__TTL="forever"),
    )
    assert result.returncode == 2
    assert "cache.ttl:" in result.stderr


def test_check_config_via_sessiongate_config_env(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen:\n  port: 99999\n", encoding="utf-8")
    result = run_cli("check-config", env=clean_env(SESSIONGATE_CONFIG=str(bad)))
    assert result.returncode == 2
    assert "listen.port:" in result.stderr
    good = write_config(tmp_path / "good.yaml", {"listen": {"port": 9999}})
    result = run_cli("check-config", env=clean_env(SESSIONGATE_CONFIG=str(good)))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "cannot read"), ("a: [unclosed\n", "not valid YAML"), ("- 1\n", "mapping")],
)
def test_check_config_unreadable_files(tmp_path, content, needle):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert needle in result.stderr
    assert str(path) in result.stderr


def test_serve_refuses_a_bad_configuration(tmp_path):
    path = write_config(tmp_path / "bad.yaml", {"upstream": {"url": "nope"}})
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert "upstream.url:" in result.stderr


# --- serve -----------------------------------------------------------------------------------


@dataclass
class Backends:
    kratos: FakeKratosServer
    app: EchoApp
    upstream: UvicornThread


@pytest.fixture
def backends() -> Iterator[Backends]:
    kratos = FakeKratosServer().start()
    app = EchoApp()
    upstream = UvicornThread(app)
    try:
        upstream.start()
        yield Backends(kratos, app, upstream)
    finally:
        upstream.stop()
        kratos.stop()


def gate_config(tmp_path: Path, backends: Backends, port: int, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "ory": {"public_url": backends.kratos.public_url, "timeout": "2s"},
        "upstream": {"url": backends.upstream.url, "timeout": 5, "connect_timeout": 1},
        "access": {"login_url": "http://127.0.0.1:4433/self-service/login/browser"},
        # a free port: gates of several tests (and fleets) may run at once
        "metrics": {"port": 0},
        **extra,
    }
    return write_config(tmp_path / "gate.yaml", data)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def wait_alive(proc: subprocess.Popen[bytes], url: str, out: Path, err: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"gate exited with {proc.returncode}: {out.read_text()}{err.read_text()}"
            )
        try:
            r = httpx.get(url + "/health/alive", timeout=1)
            if r.status_code == 200:
                assert r.json() == {"status": "ok"}
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"gate did not answer /health/alive within {STARTUP_TIMEOUT}s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def serve(tmp_path: Path, args: list[str], env: dict[str, str], port: int) -> Iterator[Running]:
    out, err = tmp_path / "gate.out", tmp_path / "gate.err"
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen([SCRIPT, "serve", *args], stdout=fout, stderr=ferr, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_alive(proc, url, out, err)
        yield Running(proc, url, out, err)
    finally:
        stop_process(proc)


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_serve_proxies_authenticated_requests_and_refuses_others(tmp_path, backends, server):
    port = free_port()
    path = gate_config(
        tmp_path, backends, port, listen={"host": "127.0.0.1", "port": port, "server": server}
    )
    alice = backends.kratos.fake.login("alice@example.com")
    with (
        serve(tmp_path, ["--config", str(path)], clean_env(), port) as gate,
        httpx.Client(base_url=gate.url, timeout=10) as c,
    ):
        r = c.get("/hello?x=1", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200, r.text
        echoed = r.json()
        assert echoed["path"] == "/hello"
        assert echoed["query"] == "x=1"
        headers = dict(echoed["headers"])
        assert headers["x-user-id"] == alice.identity_id
        assert headers["x-user-email"] == "alice@example.com"
        assert headers["x-session-id"] == alice.id
        seen = len(backends.app.requests)

        r = c.get("/hello")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == 401
        r = c.get("/hello", headers={"X-Session-Token": "not-a-real-token"})
        assert r.status_code == 401
        assert len(backends.app.requests) == seen  # refused requests never reached the app

        r = c.get("/health/ready")
        assert r.status_code == 200, r.text
        # no Host header, or two: 400 from either server, nothing reaches the app
        headers = [("X-Session-Token", alice.token)]
        for version, hosts in [("1.1", []), ("1.0", []), ("1.1", ["a.test", "b.test"])]:
            lines = [("Host", h) for h in hosts] + headers
            status, _, body = raw_request(gate.url, "/hello", lines, host=None, version=version)
            assert status == 400, (version, hosts, body)
        # the same for WebSocket handshakes: refused before Kratos or the app is asked
        upgrade = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ]
        whoami = backends.kratos.fake.count("GET", "/sessions/whoami")
        for hosts in [[], [""], ["a.test", "b.test"]]:
            lines = [("Host", h) for h in hosts] + upgrade + headers
            status, _, body = raw_request(gate.url, "/ws", lines, host=None)
            assert status in (400, 403), (hosts, body)
        assert backends.kratos.fake.count("GET", "/sessions/whoami") == whoami
        assert len(backends.app.requests) == seen
    # without public_url the Host header decides the origin: said at start-up
    assert "public_url: not set" in gate.output()
    # SIGTERM is a graceful shutdown (uvicorn re-raises the signal once it has finished) that
    # runs the gate's lifespan shutdown: its connections are closed
    assert gate.proc.returncode in (0, -signal.SIGTERM), gate.output()
    assert "sessiongate stopped: connections closed" in gate.output()


def test_serve_with_two_workers(tmp_path, backends):
    port = free_port()
    listen = {"host": "127.0.0.1", "port": port, "workers": 2}
    path = gate_config(tmp_path, backends, port, listen=listen)
    alice = backends.kratos.fake.login("alice@example.com")
    with (
        serve(tmp_path, ["--config", str(path)], clean_env(), port) as gate,
        httpx.Client(base_url=gate.url, timeout=10) as c,
    ):
        for _ in range(20):  # new connections: both workers get some
            r = c.get("/w", headers={"X-Session-Token": alice.token, "Connection": "close"})
            assert r.status_code == 200, r.text
        assert c.get("/w").status_code == 401
    assert gate.output().count("sessiongate started") == 2, gate.output()
    # each worker has its own cache: the start-up warning says so and names the setting
    assert "each with its own session cache" in gate.output()
    assert "shared.redis_url" in gate.output()


def test_serve_ready_follows_kratos(tmp_path, backends):
    port = free_port()
    path = gate_config(tmp_path, backends, port)
    with (
        serve(tmp_path, ["--config", str(path)], clean_env(), port) as gate,
        httpx.Client(base_url=gate.url, timeout=10) as c,
    ):
        assert c.get("/health/ready").status_code == 200
        backends.kratos.stop()
        # the answer is cached for a second: 503 within a few
        deadline = time.monotonic() + 5
        while (r := c.get("/health/ready")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]
        # liveness does not depend on Kratos; authenticated requests fail closed
        assert c.get("/health/alive").status_code == 200
        r = c.get("/hello", headers={"X-Session-Token": "whatever"})
        assert r.status_code == 503


def test_serve_reads_sessiongate_config(tmp_path, backends):
    port = free_port()
    path = gate_config(tmp_path, backends, port)
    alice = backends.kratos.fake.login("alice@example.com")
    env = clean_env(SESSIONGATE_CONFIG=str(path))
    with serve(tmp_path, [], env, port) as gate:
        r = httpx.get(gate.url + "/x", headers={"X-Session-Token": alice.token}, timeout=10)
        assert r.status_code == 200, r.text
        assert httpx.get(gate.url + "/x", timeout=10).status_code == 401


def test_serve_env_override_changes_behaviour(tmp_path, backends):
    port = free_port()
    path = gate_config(tmp_path, backends, port)
    env = clean_env(SESSIONGATE_ACCESS__PUBLIC_PATHS='["/open/*"]')
    with serve(tmp_path, ["--config", str(path)], env, port) as gate:
        assert httpx.get(gate.url + "/open/page", timeout=10).status_code == 200
        assert httpx.get(gate.url + "/closed/page", timeout=10).status_code == 401


def test_serve_never_prints_credentials(tmp_path, backends):
    port = free_port()
    path = gate_config(tmp_path, backends, port, log_level="debug")
    fake = backends.kratos.fake
    alice = fake.login("alice@example.com")
    bob = fake.login("bob@example.com")
    revoked = fake.login("carol@example.com")
    fake.revoke_session(revoked.id)
    with (
        serve(tmp_path, ["--config", str(path)], clean_env(), port) as gate,
        httpx.Client(base_url=gate.url, timeout=10) as c,
    ):
        assert c.get("/a", headers={"X-Session-Token": alice.token}).status_code == 200
        r = c.get("/b", headers={"Authorization": f"Bearer {alice.token}"})
        assert r.status_code == 200, r.text
        r = c.get("/c", headers={"Cookie": f"{fake.cookie_name}={bob.cookie}"})
        assert r.status_code == 200, r.text
        assert c.get("/d", headers={"X-Session-Token": revoked.token}).status_code == 401
        assert c.get("/e", headers={"X-Session-Token": "junk-token-xyz"}).status_code == 401
    # leaving the block terminated the gate: its output is complete
    assert gate.proc.returncode is not None
    output = gate.output()
    assert "sessiongate started" in output  # the output was captured
    for secret in (alice.token, bob.token, bob.cookie, revoked.token, "junk-token-xyz"):
        assert secret not in output, output


# --- metrics ---------------------------------------------------------------------------------
METRICS_AT = re.compile(r"metrics\.port is 0: the metrics are at (http://127\.0\.0\.1:\d+/metrics)")


def metrics_url(gate: Running) -> str:
    """The URL `metrics.port: 0` picked, from the start-up log."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not (found := METRICS_AT.search(gate.output())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert found, gate.output()
    return found.group(1)


def metrics_page(url: str, until: Callable[[Page], bool]) -> Page:
    """The page once `until` holds (each worker hands its figures over within a second)."""
    deadline = time.monotonic() + 10
    while True:
        page = Page(httpx.get(url, timeout=5).text)
        if until(page) or time.monotonic() > deadline:
            return page
        time.sleep(0.1)


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_serve_metrics_on_a_port_of_their_own(tmp_path, backends, server):
    port = free_port()
    listen = {"host": "127.0.0.1", "port": port, "server": server}
    path = gate_config(tmp_path, backends, port, listen=listen)  # metrics.port: 0
    alice = backends.kratos.fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    with (
        serve(tmp_path, ["--config", str(path)], clean_env(), port) as gate,
        httpx.Client(base_url=gate.url, timeout=10) as c,
    ):
        url = metrics_url(gate)
        assert c.get("/hello", headers=token).status_code == 200
        # the gate's own port has no metrics: /metrics is the app's path like any other
        assert c.get("/metrics").status_code == 401
        r = c.get("/metrics", headers=token)
        assert r.status_code == 200
        assert r.json()["path"] == "/metrics"  # the echo app answered
        page = metrics_page(url, lambda p: allowed(p) >= 2)
        assert allowed(page) == 2
        assert denied(page) == 1
        assert page.value("sessiongate_kratos_whoami_total", outcome="200") == 1
        assert page.value("sessiongate_cache_hits_total") == 1


def allowed(page: Page) -> float:
    return page.value("sessiongate_requests_total", decision="allowed", reason="")


def denied(page: Page) -> float:
    return page.value("sessiongate_requests_total", decision="denied", reason="no_credential")


def test_serve_refuses_a_metrics_port_in_use(tmp_path, backends):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        port = free_port()
        path = gate_config(tmp_path, backends, port, metrics={"port": busy})
        result = run_cli("serve", "--config", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    # one clear line naming the key, no traceback
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    expected = f"sessiongate: cannot start: metrics.port: cannot listen on 127.0.0.1:{busy} ("
    assert last.startswith(expected), result.stderr
    assert "Starting granian" not in result.stdout + result.stderr  # before any worker


def test_serve_metrics_default_port_and_off(tmp_path, backends):
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 9464))
        except OSError:
            pytest.skip("127.0.0.1:9464 (metrics.port's default) is in use on this machine")
    port = free_port()
    path = gate_config(tmp_path, backends, port, metrics={})  # every metrics default
    with serve(tmp_path, ["--config", str(path)], clean_env(), port) as gate:
        assert httpx.get(gate.url + "/x", timeout=10).status_code == 401
        page = metrics_page("http://127.0.0.1:9464/metrics", lambda p: denied(p) >= 1)
        assert denied(page) == 1
    assert "metrics at http://127.0.0.1:9464/metrics" in gate.output()
    # off: no listener, so even a port held by someone else does not matter
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        off = {"enabled": False, "port": taken.getsockname()[1]}
        path = gate_config(tmp_path, backends, port, metrics=off)
        with serve(tmp_path, ["--config", str(path)], clean_env(), port) as gate:
            assert httpx.get(gate.url + "/x", timeout=10).status_code == 401
    assert "metrics" not in gate.output()


def test_check_config_refuses_metrics_on_the_gates_port(tmp_path):
    path = write_config(
        tmp_path / "same.yaml", {"listen": {"port": 9000}, "metrics": {"port": 9000}}
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "metrics.port: 9000 is the gate's own port (listen.port)" in result.stderr
