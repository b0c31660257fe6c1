"""Which HTTP client should forward requests on the gate's hot path? Measure, don't guess.

Starts nginx on 127.0.0.1 serving a fixed ~1 KB body, then, one at a time, a minimal pure-ASGI
forwarding proxy under uvicorn (uvloop + httptools) or granian built on each candidate client,
pinned to core 1, and drives it with wrk pinned to core 0. Prints req/s and p99 for each, and
each as a ratio to nginx served directly and to the httpx baseline, all from the same run.
Two more rows bound the servers themselves: `none` answers 1 KB without any client (the
server's own ceiling), and the `_rsgi` rows are the same apps under granian's RSGI interface.

    python bench/compare_clients.py [--duration 5] [--connections 64] [--servers uvicorn,granian]

Needs nginx and wrk (Debian packages) and the candidates (pip install aiohttp pyreqwest).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# run as a script: bench/ is on sys.path, so `bench` is bench.py, the benchmark's helpers
from bench import EMPTY_PROXIES, free_port, wait_port

CANDIDATES = {
    # no client: the app answers 1 KB itself, so the server's own ceiling (ASGI, then RSGI)
    "none": """
BODY = b"x" * 1024
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"1024")]})
    await send({"type": "http.response.body", "body": BODY})
""",
    "none_rsgi": """
BODY = b"x" * 1024
async def app(scope, protocol):
    if scope.proto == "http":
        protocol.response_bytes(200, [("content-length", "1024")], BODY)
""",
    "httpx": """
import httpx
client = None
async def app(scope, receive, send):
    global client
    if scope["type"] != "http":
        return
    if client is None:
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256,
                                   max_keepalive_connections=256))
    r = await client.get(UPSTREAM + scope["path"])
    await send({"type": "http.response.start", "status": r.status_code,
                "headers": [(b"content-length", str(len(r.content)).encode())]})
    await send({"type": "http.response.body", "body": r.content})
""",
    # the empty proxies of bench.py (its limit rows): the same code in both benchmarks
    "aiohttp": EMPTY_PROXIES + "app = asgi\n",
    "aiohttp_rsgi": EMPTY_PROXIES + "app = rsgi\n",  # granian's RSGI
    "pyreqwest": """
from pyreqwest.client import ClientBuilder
client = None
async def app(scope, receive, send):
    global client
    if scope["type"] != "http":
        return
    if client is None:
        client = ClientBuilder().max_connections(256).build()
    async with client.get(UPSTREAM + scope["path"]).build_streamed() as r:
        await send({"type": "http.response.start", "status": r.status,
                    "headers": [(b"content-length", r.get_header("content-length").encode())]})
        while (chunk := await r.body_reader.read_chunk()) is not None:
            await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
""",
}


def start_nginx(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    (workdir / "www").mkdir()
    (workdir / "www" / "index.html").write_bytes(b"x" * 1024)
    conf = workdir / "nginx.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1; daemon off; pid {workdir}/nginx.pid;
        error_log {workdir}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
          access_log off; keepalive_requests 1000000;
          server {{ listen 127.0.0.1:{port};
                   location / {{ root {workdir}/www; try_files /index.html =404; }} }}
        }}""")
    )
    proc = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", str(conf)])
    wait_port(port)
    return proc


def server_args(server: str, name: str, port: int) -> list[str]:
    common = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if server == "granian":
        interface = "rsgi" if name.endswith("_rsgi") else "asgi"
        return ["-m", "granian", "--interface", interface, "--loop", "uvloop", "--no-ws",
                *common, f"proxy_{name}:app"]  # fmt: skip
    return ["-m", "uvicorn", f"proxy_{name}:app", *common, "--no-access-log",
            "--loop", "uvloop", "--http", "httptools"]  # fmt: skip


def wrk(url: str, duration: int, connections: int) -> tuple[float, str]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", out)
    return rps, p99.group(1) if p99 else "?"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--servers", default="uvicorn,granian")
    args = parser.parse_args()
    servers = args.servers.split(",")
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            print(f"missing {tool}: apt-get install nginx wrk util-linux", file=sys.stderr)
            return 2
    results: dict[str, tuple[float, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        nginx_port = free_port()
        nginx = start_nginx(workdir, nginx_port)
        try:
            upstream = f"http://127.0.0.1:{nginx_port}"
            results["nginx direct"] = wrk(upstream + "/", args.duration, args.connections)
            for (name, source), server in itertools.product(CANDIDATES.items(), servers):
                if name.endswith("_rsgi") and server != "granian":
                    continue  # RSGI is granian's own interface
                module = workdir / f"proxy_{name}.py"
                module.write_text(f"UPSTREAM = {upstream!r}\n" + textwrap.dedent(source))
                port = free_port()
                label = f"{name} ({server})"
                env = dict(os.environ, PYTHONPATH=str(workdir), BENCH_BACKEND=upstream)
                proc = subprocess.Popen(
                    ["taskset", "-c", "1", sys.executable, *server_args(server, name, port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                )
                try:
                    wait_port(port)
                    wrk(f"http://127.0.0.1:{port}/", 1, args.connections)  # warm the pool
                    results[label] = wrk(
                        f"http://127.0.0.1:{port}/", args.duration, args.connections
                    )
                except subprocess.CalledProcessError as exc:
                    print(f"{label}: failed: {exc}", file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(10)
        finally:
            nginx.terminate()
            nginx.wait(10)
    direct = results["nginx direct"][0]
    base = results.get(f"httpx ({servers[0]})", (float("nan"), ""))[0]
    print(f"{'client (server)':<22}{'req/s':>10}{'p99':>10}{'vs nginx':>10}{'vs httpx':>10}")
    for name, (rps, p99) in results.items():
        print(f"{name:<22}{rps:>10.0f}{p99:>10}{rps / direct:>10.3f}{rps / base:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
