"""sessiongate's benchmark: the gate against nginx auth_request and a naive Python gate.

Everything runs on 127.0.0.1. Servers are pinned to one core and wrk to the other, so every
figure is "one core for the server". Started per run:

* backend: nginx serving a fixed ~1 KB body (the protected app);
* whoami: nginx answering `GET /sessions/whoami` with a valid session (fresh ids) for any
  credential, logging each call (so the fake is never the bottleneck and calls can be counted);
* anchors: the backend direct; nginx plain proxy; nginx `auth_request` + `proxy_cache` (60 s);
  nginx `auth_request` to the whoami fake without a cache (one bare subrequest per request);
* forward auth: nginx `auth_request` to sessiongate's decision endpoint (`forward_auth`, no
  nginx cache, so a revocation is refused on the next request), the gate on the same core;
* reference: a straightforward Starlette + httpx gate with a dict cache (`reference_gate.py`);
* sessiongate in proxy mode, `sessiongate serve` under granian (the default) and uvicorn;
* the granian row again with `metrics: {enabled: false}`: what the metrics (on by default) cost;
* sessiongate middleware mode around a minimal ASGI app, and that app bare.

wrk runs for a bounded duration at each concurrency with N sessions rotating through the
session cookie; the table shows req/s, p50/p99, errors, whoami calls per 1000 requests, and
ratios to the anchors measured in the same run. Then a cold start (1000 new sessions arriving
together: whoami calls counted) and the gate's RSS with 100,000 cached sessions.

    bash bench/run                          # installs nginx, wrk and the project, then runs this
    python bench/bench.py --duration 10 --sessions 100 --connections 64,256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
SERVER_CORE = "1"
LOAD_CORE = "0"
BOTH_CORES = "0,1"  # the two-worker row shares core 0 with wrk: a lower bound
TWO_WORKERS = "sessiongate proxy (granian, 2 workers)"
# the shared mode (issue 12): the same two workers with Redis behind their caches
SHARED = "sessiongate 2 workers, shared (Redis)"
STRICT = "sessiongate 2 workers, shared strict"
# forward auth (issue 13): nginx auth_request to the decision endpoint, and its no-cache anchor
DECISIONS = "nginx auth_request -> sessiongate decisions"
NO_CACHE = "nginx auth_request, no cache"
# metrics (issue 14): the same build with `metrics: {enabled: false}` beside the default (on)
GRANIAN = "sessiongate proxy (granian)"
METRICS_OFF = "sessiongate proxy (granian), metrics off"
# access logs (issue 14): the same proxy row with JSON access lines (to stderr: /dev/null here)
# against none at all
ACCESS_JSON = "sessiongate proxy, JSON access log"
ACCESS_OFF = "sessiongate proxy, no access log"
BENCH_SECRET = "bench-secret-bench-secret-0123456789abcdef"  # noqa: S105 (loopback bench)
# identity tokens (issue 16): the granian row with a signed JWT for the app (cache warm: no
# signature per request), against the same row without
SIGNED_JWT = "sessiongate proxy (granian), identity token"
AUTH_REQUEST = "nginx auth_request+cache"
# issue 15's limit: the gate's data path with no gate in it (the same client, server and core)
EMPTY_ASGI = "empty proxy (aiohttp, granian ASGI)"
EMPTY_RSGI = "empty proxy (aiohttp, granian RSGI)"
RSGI_ADAPTER = "sessiongate proxy, RSGI adapter (prototype)"  # bench/rsgi_adapter.py
BARE = "bare ASGI app"
MIDDLEWARE = "middleware mode"
REFERENCE = "starlette+httpx gate"
UVICORN = "sessiongate proxy (uvicorn)"

#: `--rows`: row groups; the nginx anchors always run (every ratio needs them)
ANCHORS = ("direct (nginx static)", "nginx proxy, no auth", AUTH_REQUEST)
GROUPS = {
    "proxy": (
        GRANIAN,
        METRICS_OFF,
        SIGNED_JWT,
        UVICORN,
        REFERENCE,
        ACCESS_JSON,
        ACCESS_OFF,
        EMPTY_ASGI,
        EMPTY_RSGI,
        RSGI_ADAPTER,
    ),
    "middleware": (BARE, MIDDLEWARE),
    "workers": (TWO_WORKERS, SHARED, STRICT),
    "forward-auth": (NO_CACHE, DECISIONS),
}


@dataclass(frozen=True)
class Target:
    """A promise the table checks: `name`'s figure over `ref`'s, per round, at `c`."""

    name: str
    ref: str
    at_least: float | None = None  # req/s ratio
    at_most: float | None = None  # p99 ratio (latency: lower is better)
    connections: tuple[int, ...] = (64, 256)


TARGETS = (
    Target(GRANIAN, AUTH_REQUEST, at_least=0.35),  # issue 15
    Target(GRANIAN, AUTH_REQUEST, at_most=5.0, connections=(64,)),
    Target(GRANIAN, AUTH_REQUEST, at_most=2.0, connections=(256,)),
    Target(MIDDLEWARE, BARE, at_least=0.95),
    Target(GRANIAN, METRICS_OFF, at_least=0.97),  # issue 14
    Target(ACCESS_JSON, ACCESS_OFF, at_least=0.9),
    Target(SHARED, TWO_WORKERS, at_least=0.95),  # issue 12
    Target(STRICT, TWO_WORKERS, at_least=0.7),
    Target(DECISIONS, NO_CACHE, at_least=0.6),  # issue 13
    Target(SIGNED_JWT, GRANIAN, at_least=0.95),  # issue 16
)


def skipped_rows(rows: str, skip: str) -> set[str]:
    """The rows not run: those outside the `--rows` groups, and those `--skip` names."""
    out = set(filter(None, (s.strip() for s in skip.split(";"))))
    chosen = set(filter(None, (g.strip() for g in rows.split(","))))
    unknown = chosen - set(GROUPS)
    if unknown:
        raise SystemExit(f"--rows: unknown group(s) {sorted(unknown)}; known: {sorted(GROUPS)}")
    if chosen:
        out |= {row for group, names in GROUPS.items() if group not in chosen for row in names}
    return out


# -- helpers --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def session_body() -> bytes:
    now = datetime.now(UTC)
    # nginx puts a fresh $request_id in place of these: every credential gets its own session
    iid = "SG-IDENTITY-ID"
    session = {
        "id": "SG-SESSION-ID",
        "active": True,
        "expires_at": (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "authenticated_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "authenticator_assurance_level": "aal1",
        "authentication_methods": [
            {
                "method": "password",
                "aal": "aal1",
                "completed_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            }
        ],
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "identity": {
            "id": iid,
            "schema_id": "default",
            "schema_url": "",
            "state": "active",
            "traits": {"email": "bench@example.com", "name": {"first": "Bench", "last": "Mark"}},
            "metadata_public": None,
            "created_at": now.isoformat(),
            "updated_at": now.isoformat(),
            "organization_id": None,
        },
        "devices": [
            {
                "id": str(uuid.uuid4()),
                "ip_address": "127.0.0.1",
                "user_agent": "wrk",
                "location": "",
            }
        ],
    }
    return json.dumps(session, separators=(",", ":")).encode()


@dataclass
class Procs:
    items: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, args: list[str], cores: str = SERVER_CORE, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        # BENCH_LOGS=dir keeps every server's output there (one file per process)
        logs = os.environ.get("BENCH_LOGS")
        out = (
            open(Path(logs) / f"server-{len(self.items)}.log", "ab")  # noqa: SIM115
            if logs
            else subprocess.DEVNULL
        )
        proc = subprocess.Popen(
            ["taskset", "-c", cores, *args],
            stdout=out,
            stderr=subprocess.STDOUT if logs else subprocess.DEVNULL,
            start_new_session=True,
            **kwargs,
        )  # type: ignore[call-overload]
        self.items.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.items):
            self.stop(proc)


# -- nginx ----------------------------------------------------------------------------------
def nginx_conf(work: Path, ports: dict[str, int]) -> Path:
    (work / "www").mkdir(exist_ok=True)
    (work / "www" / "index.html").write_bytes(b"<p>" + b"x" * 1017 + b"</p>")  # 1024 bytes
    (work / "whoami.json").write_bytes(session_body())
    (work / "cache").mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1; daemon off; pid {work}/nginx.pid;
        error_log {work}/error.log error;
        events {{ worker_connections 8192; }}
        http {{
          access_log off; keepalive_requests 10000000; keepalive_timeout 120s;
          upstream backend {{ server 127.0.0.1:{ports["backend"]}; keepalive 256; }}
          upstream whoami {{ server 127.0.0.1:{ports["whoami"]}; keepalive 256; }}
          proxy_cache_path {work}/cache keys_zone=auth:16m max_size=64m inactive=120s;

          server {{ listen 127.0.0.1:{ports["backend"]};   # the protected app
            location / {{ root {work}/www; try_files /index.html =404; }} }}

          server {{ listen 127.0.0.1:{ports["whoami"]};    # a fast whoami fake, logs calls
            location = /sessions/whoami {{
              access_log {work}/whoami.log;
              default_type application/json;
              alias {work}/whoami.json;
              sub_filter_types application/json; sub_filter_once off;
              sub_filter SG-SESSION-ID $request_id; sub_filter SG-IDENTITY-ID i$request_id; }}
            location = /health/ready {{ return 200 '{{"status":"ok"}}'; }} }}

          server {{ listen 127.0.0.1:{ports["plain"]};     # nginx plain proxy, no auth
            location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                         proxy_set_header Connection ""; }} }}

          server {{ listen 127.0.0.1:{ports["authreq"]};   # nginx auth_request + cache
            location / {{ auth_request /_auth; proxy_pass http://backend;
                         proxy_http_version 1.1; proxy_set_header Connection ""; }}
            location = /_auth {{ internal;
              proxy_pass http://whoami/sessions/whoami; proxy_http_version 1.1;
              proxy_set_header Connection ""; proxy_pass_request_body off;
              proxy_set_header Content-Length ""; proxy_set_header Cookie $http_cookie;
              proxy_cache auth; proxy_cache_key $http_cookie$http_x_session_token;
              proxy_cache_valid 200 60s; proxy_cache_lock on;
              proxy_ignore_headers Cache-Control Expires Set-Cookie; }} }}

          server {{ listen 127.0.0.1:{ports["authreq_nocache"]};   # auth_request, no cache
            location / {{ auth_request /_auth; proxy_pass http://backend;
                         proxy_http_version 1.1; proxy_set_header Connection ""; }}
            location = /_auth {{ internal;
              proxy_pass http://whoami/sessions/whoami; proxy_http_version 1.1;
              proxy_set_header Connection ""; proxy_pass_request_body off;
              proxy_set_header Content-Length ""; }} }}

          # auth_request to sessiongate's decision endpoint, no cache: the README's nginx
          # config (forward_auth.source: forwarded) without what the load does not exercise
          upstream decisions {{ server 127.0.0.1:{ports["decisions"]}; keepalive 256; }}
          server {{ listen 127.0.0.1:{ports["authreq_gate"]};
            location / {{ auth_request /_sg; proxy_pass http://backend;
                         auth_request_set $sg_user $upstream_http_x_user_id;
                         auth_request_set $sg_email $upstream_http_x_user_email;
                         auth_request_set $sg_session $upstream_http_x_session_id;
                         auth_request_set $sg_cookie $upstream_http_cookie;
                         proxy_set_header X-User-Id $sg_user;
                         proxy_set_header X-User-Email $sg_email;
                         proxy_set_header X-Session-Id $sg_session;
                         proxy_set_header Cookie $sg_cookie;
                         proxy_http_version 1.1; proxy_set_header Connection ""; }}
            location = /_sg {{ internal;
              proxy_pass http://decisions/decisions; proxy_http_version 1.1;
              proxy_set_header Connection ""; proxy_pass_request_body off;
              proxy_set_header Content-Length "";
              proxy_set_header X-Forwarded-Method $request_method;
              proxy_set_header X-Forwarded-Proto $scheme;
              proxy_set_header X-Forwarded-Host $http_host;
              proxy_set_header X-Forwarded-Uri $request_uri; }} }}
        }}""")
    )
    return conf


def whoami_calls(work: Path) -> int:
    log = work / "whoami.log"
    if not log.exists():
        return 0
    with log.open("rb") as fh:
        return sum(1 for _ in fh)


# -- load -----------------------------------------------------------------------------------
def wrk_script(work: Path, sessions: int, prefix: str) -> Path:
    script = work / f"sessions_{prefix}_{sessions}.lua"
    script.write_text(
        textwrap.dedent(f"""
        local n = {sessions}
        local i = 0
        request = function()
          i = (i % n) + 1
          local cookie = "theme=dark; ory_kratos_session=ory_st_{prefix}" .. i
          return wrk.format("GET", "/", {{["Cookie"] = cookie}})
        end
        """)
    )
    return script


@dataclass
class Result:
    name: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    whoami_per_1000: float
    round: int = 0


def _ms(text: str) -> float:
    value = float(re.sub(r"[a-z]+$", "", text))
    unit = re.sub(r"^[\d.]+", "", text)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(
    name: str, url: str, script: Path, connections: int, duration: int, work: Path
) -> Result:
    before = whoami_calls(work)
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CORE,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    ).stdout
    if os.environ.get("BENCH_DEBUG"):
        print(out)
    calls = whoami_calls(work) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50_match = re.search(r"^\s+50%\s+([\d.]+[a-z]+)", out, re.M)
    p99_match = re.search(r"^\s+99%\s+([\d.]+[a-z]+)", out, re.M)
    p50 = _ms(p50_match.group(1)) if p50_match else float("nan")
    p99 = _ms(p99_match.group(1)) if p99_match else float("nan")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return Result(
        name, connections, rps, p50, p99, errors, total, 1000.0 * calls / total if total else 0.0
    )


# -- the servers under test -----------------------------------------------------------------
def gate_config(
    work: Path,
    ports: dict[str, int],
    port: int,
    upstream: str,
    server: str = "granian",
    workers: int = 1,
    shared: str = "",
    metrics: bool = True,
    log: str = "level: warning",
    identity_token: bool = False,
) -> Path:
    """A gate's settings; without `upstream` it is a decision service (forward auth). Metrics
    are on (the default) on a free port, or off; access lines are written whatever
    `log.level` says (on by default, text). `identity_token`: the app also gets a signed JWT
    (ES256, a fresh keys file), for the row against the same run without (target >= 0.95x)."""
    path = work / f"gate_{port}.yaml"
    path.write_text(
        textwrap.dedent(f"""
        listen: {{host: 127.0.0.1, port: {port}, server: {server}, workers: {workers}}}
        ory: {{public_url: "http://127.0.0.1:{ports["whoami"]}", timeout: 5s, max_inflight: 2048}}
        cache: {{ttl: 300s, max_entries: 200000}}
        log: {{{log}}}
        """)
        + (
            f'upstream: {{url: "{upstream}", max_connections: 512}}\n'
            if upstream
            else "forward_auth: {enabled: true, source: forwarded, deny_browsers: header}\n"
        )
        + (f"shared: {{{shared}}}\n" if shared else "")
        + ("metrics: {port: 0}\n" if metrics else "metrics: {enabled: false}\n")
        + (identity_token_config(work, port) if identity_token else "")
    )
    return path


def identity_token_config(work: Path, port: int) -> str:
    """The `identity_token` settings fragment, with a new ES256 keys file (mode 0600)."""
    from sessiongate.signing_keys import new_private_jwk, write_keys_file

    keys = work / f"jwks_{port}.json"
    write_keys_file(keys, {"keys": [new_private_jwk("ES256")]})
    return (
        f'identity_token: {{enabled: true, keys_file: "{keys}", '
        f'issuer: "http://127.0.0.1:{port}"}}\n'
    )


# The empty proxies: what forwarding alone costs on the gate's path (aiohttp to the backend,
# response streamed back, no authentication, no header work), under granian's two interfaces.
EMPTY_PROXIES = """
import os
import aiohttp

UPSTREAM = os.environ["BENCH_BACKEND"]
session = None

def client():
    global session
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512), auto_decompress=False
        )
    return session

async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    async with client().get(UPSTREAM + scope["path"]) as r:
        await send({"type": "http.response.start", "status": r.status,
                    "headers": [(b"content-length", r.headers["content-length"].encode())]})
        async for chunk in r.content.iter_chunked(65536):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

async def rsgi(scope, protocol):
    if scope.proto != "http":
        return
    async with client().get(UPSTREAM + scope.path) as r:
        transport = protocol.response_stream(
            r.status, [("content-length", r.headers["content-length"])]
        )
        async for chunk in r.content.iter_chunked(65536):
            await transport.send_bytes(chunk)
"""


def granian_args(target: str, port: int, interface: str) -> list[str]:
    return [
        *(PYTHON, "-m", "granian", "--interface", interface, "--loop", "uvloop", "--no-ws"),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        *("--http", "1", "--backlog", "4096", target),
    ]


MIDDLEWARE_APP = """
import os
from sessiongate.config import load_settings
from sessiongate.middleware import SessionGateMiddleware

BODY = b"<p>" + b"x" * 1017 + b"</p>"
HEADERS = [(b"content-type", b"text/html"), (b"content-length", b"1024")]

async def bare(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})

gated = SessionGateMiddleware(bare, load_settings(os.environ["BENCH_GATE_CONFIG"]))
"""


def uvicorn_args(target: str, port: int) -> list[str]:
    return [
        PYTHON,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
        "--no-server-header",
        "--no-proxy-headers",
        "--backlog",
        "4096",
    ]


# -- cold start and memory ------------------------------------------------------------------
async def cold_start(url: str, sessions: int, prefix: str = "cold") -> tuple[int, int]:
    """`sessions` new credentials arriving together; returns (ok responses, total)."""
    import httpx

    limits = httpx.Limits(max_connections=sessions, max_keepalive_connections=sessions)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one(i: int) -> int:
            cookie = f"ory_kratos_session=ory_st_{prefix}{i}"
            r = await client.get(url, headers={"Cookie": cookie, "Connection": "close"})
            return r.status_code

        statuses = await asyncio.gather(*(one(i) for i in range(sessions)))
    return sum(1 for s in statuses if s == 200), len(statuses)


def rss_mb(pid: int) -> tuple[float, float]:
    """(RSS of the largest process: the worker holding the cache, RSS of all) in MB.

    granian runs a supervisor process and the worker; uvicorn with one worker is one process.
    """
    import psutil

    root = psutil.Process(pid)
    sizes = [p.memory_info().rss / 2**20 for p in [root, *root.children(True)]]
    return max(sizes), sum(sizes)


def fill_cache(url: str, work: Path, sessions: int) -> None:
    """Requests until `sessions` new sessions were validated (bounded: 300 s)."""
    before = whoami_calls(work)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = whoami_calls(work) - before
        if done >= sessions:
            return
        # each run starts where the last stopped: every request a new session
        mem_script = work / "memory.lua"
        mem_script.write_text(
            textwrap.dedent(f"""
            local i = {done}
            request = function()
              i = i + 1
              if i > {sessions} then i = 1 end
              local cookie = "ory_kratos_session=ory_st_mem" .. i
              return wrk.format("GET", "/", {{["Cookie"] = cookie}})
            end""")
        )
        run_wrk("memory", url, mem_script, 64, 5, work)


# -- main -----------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=5,
        help="seconds per wrk run (5 rounds of 5 s: the full run takes ~27 minutes on 2 cores)",
    )
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--connections", default="64,256")
    parser.add_argument("--cold", type=int, default=1000, help="sessions in the cold start")
    parser.add_argument("--memory-sessions", type=int, default=100_000)
    parser.add_argument("--skip", default="", help="rows to skip, separated by ';'")
    parser.add_argument(
        "--rows",
        default="",
        help=f"row groups to run, separated by ',' (default all: {', '.join(GROUPS)}); the "
        "nginx anchors always run",
    )
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="run every row this many times, interleaved (A, B, A, B, ...); the table shows "
        "medians, the targets their worst round",
    )
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            print(f"missing {tool}: run bash bench/run (installs nginx and wrk)", file=sys.stderr)
            return 2
    conns = [int(c) for c in args.connections.split(",")]
    skip = skipped_rows(args.rows, args.skip)
    procs = Procs()
    results: list[Result] = []
    extra: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="sessiongate-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers (www-data when started as root) must read it
        nginx_ports = ("backend", "whoami", "plain", "authreq", "authreq_nocache", "authreq_gate")
        ports = {k: free_port() for k in (*nginx_ports, "decisions")}
        try:
            procs.start(["nginx", "-c", str(nginx_conf(work, ports))])
            for name in nginx_ports:
                wait_port(ports[name])
            rows: list[tuple[str, str, int]] = []  # (name, url, port its server listens on)

            def add(name: str, port: int, url_port: int = 0) -> None:
                rows.append((name, f"http://127.0.0.1:{url_port or port}/", port))

            backend = f"http://127.0.0.1:{ports['backend']}"
            add("direct (nginx static)", ports["backend"])
            add("nginx proxy, no auth", ports["plain"])
            add("nginx auth_request+cache", ports["authreq"])
            add(NO_CACHE, ports["authreq_nocache"])
            servers: dict[str, list[str]] = {}
            ref_port = free_port()
            servers["starlette+httpx gate"] = [
                PYTHON,
                str(HERE / "reference_gate.py"),
                "--port",
                str(ref_port),
                "--upstream",
                backend,
                "--whoami",
                f"http://127.0.0.1:{ports['whoami']}",
            ]
            sg_port, sg_granian_port = free_port(), free_port()
            env = dict(os.environ)
            for server, port in (("granian", sg_granian_port), ("uvicorn", sg_port)):
                servers[f"sessiongate proxy ({server})"] = [
                    PYTHON,
                    "-m",
                    "sessiongate.cli",
                    "serve",
                    "--config",
                    str(gate_config(work, ports, port, backend, server)),
                ]
            off_port = free_port()
            servers[METRICS_OFF] = [
                *(PYTHON, "-m", "sessiongate.cli", "serve", "--config"),
                str(gate_config(work, ports, off_port, backend, "granian", metrics=False)),
            ]
            token_port = free_port()
            servers[SIGNED_JWT] = [
                *(PYTHON, "-m", "sessiongate.cli", "serve", "--config"),
                str(gate_config(work, ports, token_port, backend, identity_token=True)),
            ]
            add(SIGNED_JWT, token_port)
            for name, log in (
                (ACCESS_JSON, "level: warning, format: json, access: true"),
                (ACCESS_OFF, "level: warning, access: false"),
            ):
                port = free_port()
                servers[name] = [
                    *(PYTHON, "-m", "sessiongate.cli", "serve", "--config"),
                    str(gate_config(work, ports, port, backend, log=log)),
                ]
                add(name, port)
            two_port = free_port()
            servers[TWO_WORKERS] = [
                PYTHON,
                "-m",
                "sessiongate.cli",
                "serve",
                "--config",
                str(gate_config(work, ports, two_port, backend, "granian", workers=2)),
            ]
            # the shared mode's rows: one redis-server for both (no persistence)
            redis_port, shared_port, strict_port = free_port(), free_port(), free_port()
            if not {SHARED, STRICT} <= skip and shutil.which("redis-server"):
                procs.start(
                    [
                        *("redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"),
                        *("--save", "", "--appendonly", "no"),
                    ],
                    LOAD_CORE,
                )
                wait_port(redis_port)
                redis_url = f'redis_url: "redis://127.0.0.1:{redis_port}/0"'
                for name, port, mode in (
                    (SHARED, shared_port, "eventual"),
                    (STRICT, strict_port, "strict"),
                ):
                    servers[name] = [
                        PYTHON,
                        "-m",
                        "sessiongate.cli",
                        "serve",
                        "--config",
                        str(
                            gate_config(
                                work,
                                ports,
                                port,
                                backend,
                                "granian",
                                workers=2,
                                shared=f"{redis_url}, consistency: {mode}, prefix: {mode}",
                            )
                        ),
                    ]
            env["SESSIONGATE_SECRET"] = BENCH_SECRET
            mw_port, bare_port = free_port(), free_port()
            (work / "mw_app.py").write_text(MIDDLEWARE_APP)
            env["BENCH_GATE_CONFIG"] = str(gate_config(work, ports, mw_port, backend))
            env["PYTHONPATH"] = os.pathsep.join(
                [str(work), str(HERE.parent / "src"), str(HERE.parent)]
            )
            servers["bare ASGI app"] = uvicorn_args("mw_app:bare", bare_port)
            (work / "empty_proxies.py").write_text(EMPTY_PROXIES)
            env["BENCH_BACKEND"] = backend
            for name, interface in ((EMPTY_ASGI, "asgi"), (EMPTY_RSGI, "rsgi")):
                port = free_port()
                servers[name] = granian_args(f"empty_proxies:{interface}", port, interface)
                add(name, port)
            rsgi_port = free_port()
            servers[RSGI_ADAPTER] = [
                "env",
                f"SESSIONGATE_CONFIG={gate_config(work, ports, rsgi_port, backend)}",
                *granian_args("bench.rsgi_adapter:gate", rsgi_port, "rsgi")[:-1],
                *("--factory", "bench.rsgi_adapter:gate"),
            ]
            add(RSGI_ADAPTER, rsgi_port)
            servers["middleware mode"] = uvicorn_args("mw_app:gated", mw_port)
            server_ports = {
                "starlette+httpx gate": ref_port,
                GRANIAN: sg_granian_port,
                METRICS_OFF: off_port,
                "sessiongate proxy (uvicorn)": sg_port,
                TWO_WORKERS: two_port,
                **({SHARED: shared_port, STRICT: strict_port} if SHARED in servers else {}),
                "bare ASGI app": bare_port,
                "middleware mode": mw_port,
            }
            for name, port in server_ports.items():
                add(name, port)
            # nginx (always up) in front, the decision-only gate started for its row
            servers[DECISIONS] = [
                *(PYTHON, "-m", "sessiongate.cli", "serve", "--config"),
                str(gate_config(work, ports, ports["decisions"], "")),
            ]
            add(DECISIONS, ports["decisions"], ports["authreq_gate"])
            script = wrk_script(work, args.sessions, "warm")
            for rnd in range(args.rounds):
                # odd rounds run the rows backwards: a machine that slows down (or warms up)
                # during a round favours neither the earlier nor the later rows
                for name, url, port in rows if rnd % 2 == 0 else rows[::-1]:
                    if name in skip:
                        continue
                    proc = None
                    if name in servers:
                        cores = BOTH_CORES if name in (TWO_WORKERS, SHARED, STRICT) else SERVER_CORE
                        proc = procs.start(servers[name], cores, env=env, cwd=str(HERE.parent))
                        wait_port(port)
                    try:
                        # warm the cache (every session once) and the pools
                        run_wrk(name, url, script, min(conns), 2, work)
                        for c in conns:
                            result = run_wrk(name, url, script, c, args.duration, work)
                            result.round = rnd
                            results.append(result)
                            print(
                                f"  {name:<30} c={c:<4} {result.rps:>9.0f} req/s "
                                f"p99 {result.p99_ms:>8.2f} ms  errors {result.errors}",
                                flush=True,
                            )
                        if name == SHARED and proc is not None and rnd == 0:
                            # the shared mode: one whoami per session for both workers
                            before = whoami_calls(work)
                            ok, total = asyncio.run(cold_start(url, args.cold, "shared"))
                            asyncio.run(cold_start(url, args.cold, "shared"))  # same sessions again
                            extra["cold_start_two_workers_shared"] = {
                                "sessions": args.cold,
                                "ok": ok,
                                "whoami_calls_after_two_visits": whoami_calls(work) - before,
                            }
                            print(f"  shared: {extra['cold_start_two_workers_shared']}", flush=True)
                        if name == TWO_WORKERS and proc is not None and rnd == 0:
                            # each worker has its own cache: a new session costs up to one whoami
                            # per worker, however its connections are spread
                            before = whoami_calls(work)
                            ok, total = asyncio.run(cold_start(url, args.cold, "two"))
                            extra["cold_start_two_workers"] = {
                                "sessions": args.cold,
                                "ok": ok,
                                "whoami_calls": whoami_calls(work) - before,
                            }
                            asyncio.run(cold_start(url, args.cold, "two"))  # same sessions again
                            extra["cold_start_two_workers"]["whoami_calls_after_second_visit"] = (
                                whoami_calls(work) - before
                            )
                            print(f"  two workers: {extra['cold_start_two_workers']}", flush=True)
                        if name == "sessiongate proxy (granian)" and proc is not None and rnd == 0:
                            before = whoami_calls(work)
                            ok, total = asyncio.run(cold_start(url, args.cold))
                            extra["cold_start"] = {
                                "sessions": args.cold,
                                "ok": ok,
                                "total": total,
                                "whoami_calls": whoami_calls(work) - before,
                            }
                            print(f"  cold start: {extra['cold_start']}", flush=True)
                            # memory on a fresh process: the figure is the cache's, not what a
                            # burst of 1000 connections left in the allocator
                            procs.stop(proc)
                            proc = procs.start(servers[name], env=env, cwd=str(HERE.parent))
                            wait_port(port)
                            time.sleep(1)
                            base = rss_mb(proc.pid)
                            before = whoami_calls(work)
                            fill_cache(url, work, args.memory_sessions)
                            worker, every = rss_mb(proc.pid)
                            extra["memory"] = {
                                "sessions": whoami_calls(work) - before,
                                "worker_rss_mb_before": round(base[0], 1),
                                "worker_rss_mb_after": round(worker, 1),
                                "all_processes_rss_mb_after": round(every, 1),
                            }
                            print(f"  memory: {extra['memory']}", flush=True)
                    finally:
                        if proc is not None:
                            procs.stop(proc)
        finally:
            procs.stop_all()
    print_table(results, extra, args)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": [r.__dict__ for r in results], **extra}, indent=2)
        )
    return 0


def median_rows(results: list[Result]) -> list[Result]:
    """Per (setup, c): the round with the median req/s (the upper one of an even count)."""
    groups: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.name, r.connections), []).append(r)
    return [sorted(rs, key=lambda r: r.rps)[len(rs) // 2] for rs in groups.values()]


def round_ratios(results: list[Result], name: str, ref: str, c: int) -> list[float]:
    """`name`'s req/s over `ref`'s, round by round (the two measured minutes apart at most)."""
    rps = {(r.name, r.round): r.rps for r in results if r.connections == c}
    rounds = sorted({r.round for r in results})
    return [
        rps[(name, n)] / rps[(ref, n)] for n in rounds if rps.get((name, n)) and rps.get((ref, n))
    ]


def round_p99_ratios(results: list[Result], name: str, ref: str, c: int) -> list[float]:
    """`name`'s p99 over `ref`'s, round by round."""
    p99 = {(r.name, r.round): r.p99_ms for r in results if r.connections == c}
    rounds = sorted({r.round for r in results})
    return [
        p99[(name, n)] / p99[(ref, n)] for n in rounds if p99.get((name, n)) and p99.get((ref, n))
    ]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


def target_rows(results: list[Result]) -> list[str]:
    """The targets' table: per target and c, the median over rounds, the worst round, the range,
    and whether the median meets it (and the worst round too)."""
    lines = [
        "| target | c | median | worst round | range | met (median) | met (worst) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in TARGETS:
        for c in t.connections:
            if t.at_most is not None:
                ratios, goal = round_p99_ratios(results, t.name, t.ref, c), t.at_most
                what, worst = f"{t.name} p99 / {t.ref} p99 <= {goal}", max(ratios, default=0)
                meets = lambda v, goal=goal: v <= goal  # noqa: E731
            else:
                goal = t.at_least or 0.0
                ratios = round_ratios(results, t.name, t.ref, c)
                what, worst = f"{t.name} / {t.ref} >= {goal}", min(ratios, default=0)
                meets = lambda v, goal=goal: v >= goal  # noqa: E731
            if not ratios:
                continue
            mid = median(ratios)
            lines.append(
                f"| {what} | {c} | {mid:.3f} | {worst:.3f} | {min(ratios):.3f}-{max(ratios):.3f} "
                f"| {'yes' if meets(mid) else 'NO'} | {'yes' if meets(worst) else 'NO'} |"
            )
    return lines


def ratio_text(ratios: list[float]) -> str:
    """The median ratio; over several rounds, with their range."""
    ordered = sorted(ratios)
    median = (
        ordered[len(ordered) // 2]
        if len(ordered) % 2
        else ((ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2)
    )
    if len(ordered) == 1:
        return f"{median:.3f}"
    return f"{median:.3f} (median of {len(ordered)} rounds, {ordered[0]:.3f}-{ordered[-1]:.3f})"


def print_table(results: list[Result], extra: dict[str, object], args: argparse.Namespace) -> None:
    rows = median_rows(results)
    by = {(r.name, r.connections): r for r in rows}
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rounds = f" · median of {args.rounds} interleaved rounds" if args.rounds > 1 else ""
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d} · {platform.system()} {platform.machine()} · {cpu} · "
        f"{os.cpu_count()} cores · server on core {SERVER_CORE}, wrk on core {LOAD_CORE} · "
        f"{args.sessions} sessions · {args.duration}s per run{rounds}\n"
    )
    print(
        "| setup | c | req/s | p50 ms | p99 ms | errors | whoami/1000 | vs direct | "
        "vs auth_request | vs starlette+httpx |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:

        def ratio(name: str, r: Result = r) -> str:
            ref = by.get((name, r.connections))
            return f"{r.rps / ref.rps:.3f}" if ref and ref.rps else "-"

        print(
            f"| {r.name} | {r.connections} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.errors} | {r.whoami_per_1000:.2f} | {ratio('direct (nginx static)')} | "
            f"{ratio('nginx auth_request+cache')} | {ratio('starlette+httpx gate')} |"
        )
    pairs = [
        ("middleware mode", "bare ASGI app"),
        ("sessiongate proxy (granian)", "nginx auth_request+cache"),
        (DECISIONS, NO_CACHE),
        (DECISIONS, "nginx auth_request+cache"),
        (DECISIONS, "sessiongate proxy (granian)"),
        (GRANIAN, METRICS_OFF),  # metrics on vs off: target >= 0.97
        (SHARED, TWO_WORKERS),
        (STRICT, TWO_WORKERS),
        (ACCESS_JSON, ACCESS_OFF),  # target >= 0.9
        (SIGNED_JWT, GRANIAN),  # target >= 0.95
        # the limit: forwarding alone (no gate) against the anchor, and the gate against it
        (EMPTY_ASGI, AUTH_REQUEST),
        (EMPTY_RSGI, AUTH_REQUEST),
        (EMPTY_RSGI, EMPTY_ASGI),
        (GRANIAN, EMPTY_ASGI),
        (RSGI_ADAPTER, GRANIAN),  # the gate's core behind a thin RSGI adapter
    ]
    for c in sorted({r.connections for r in results}):
        print()
        for name, ref in pairs:
            ratios = round_ratios(results, name, ref, c)
            if ratios:
                print(f"{name} vs {ref} at c={c}: {ratio_text(ratios)}")
        gate, ngx = (
            by.get(("sessiongate proxy (granian)", c)),
            by.get(("nginx auth_request+cache", c)),
        )
        if gate and ngx:
            print(f"sessiongate p99 vs auth_request p99 at c={c}: {gate.p99_ms / ngx.p99_ms:.1f}x")
    print("\nTargets (per-round ratios; a target is met when the median meets it):\n")
    print("\n".join(target_rows(results)))
    for key, value in extra.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    raise SystemExit(main())
