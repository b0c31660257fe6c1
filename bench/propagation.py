"""The shared mode's propagation time: revoke through one replica, refused by the other.

Started per run, all on 127.0.0.1: a redis-server (no persistence), the Kratos fake as its own
process (`sessiongate fake-kratos`, seeded with one identity and N sessions), a static app
(`python -m http.server`), and two `sessiongate serve` replicas (one worker each) sharing the
Redis. For each session: the session is admitted (and cached) at replica B, revoked through
replica A's relay (`DELETE /admin/sessions/{id}`), and B is asked again on the same kept-alive
connection until it refuses (401). The time from A's 204 to B's first 401 is one sample; the
run prints the median, p99 and max, and the row for bench/README.md.

    python bench/propagation.py --revocations 200
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

SCRIPT = str(Path(sys.executable).with_name("sessiongate"))
SECRET = "bench-secret-of-at-least-32-bytes!!"  # noqa: S105 (a throwaway test secret)
ADMIN_KEY = "bench-admin-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check, what: str, within: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} did not come up within {within}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revocations", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sg-propagation-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONGATE_")}
    env.update(SESSIONGATE_SECRET=SECRET, SESSIONGATE_ADMIN_KEYS=ADMIN_KEY)

    def start(cmd: list[str], name: str, **kw) -> None:  # type: ignore[no-untyped-def]
        log = (tmp / f"{name}.log").open("wb")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env, **kw))

    try:
        sessions = [(str(uuid.uuid4()), f"bench-token-{i}") for i in range(args.revocations)]
        seed = {
            "identities": [
                {
                    "email": "bench@example.com",
                    "sessions": [{"id": sid, "token": tok} for sid, tok in sessions],
                }
            ]
        }
        (tmp / "seed.yaml").write_text(yaml.safe_dump(seed))
        redis_port, kratos_port, app_port = free_port(), free_port(), free_port()
        admin_port = free_port()
        start(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            "redis",
        )
        start(
            [
                SCRIPT,
                "fake-kratos",
                "--port",
                str(kratos_port),
                "--admin-port",
                str(admin_port),
                "--seed",
                str(tmp / "seed.yaml"),
            ],
            "kratos",
        )
        (tmp / "www").mkdir()
        (tmp / "www" / "x").write_text("app\n")
        start(
            [sys.executable, "-m", "http.server", str(app_port), "--bind", "127.0.0.1"],
            "app",
            cwd=tmp / "www",
        )
        gates = []
        for name in ("a", "b"):
            port = free_port()
            config = {
                "listen": {"host": "127.0.0.1", "port": port},
                "ory": {
                    "public_url": f"http://127.0.0.1:{kratos_port}",
                    "admin_url": f"http://127.0.0.1:{admin_port}",
                },
                "upstream": {"url": f"http://127.0.0.1:{app_port}"},
                "sessions_api": {"admin": {"enabled": True}},
                "shared": {"redis_url": f"redis://127.0.0.1:{redis_port}/0"},
                "metrics": {"port": 0},  # two gates at once
                "log": {"level": "warning"},
            }
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
            start([SCRIPT, "serve", "--config", str(tmp / f"{name}.yaml")], f"gate-{name}")
            gates.append(f"http://127.0.0.1:{port}")
        a, b = gates
        for url in gates:
            wait_for(
                lambda url=url: (
                    httpx.get(url + "/health/ready").json()["shared"]["redis"] == "connected"
                ),
                f"gate {url}",
            )
        delays, misses = [], []
        with httpx.Client(timeout=5) as client:
            for sid, token in sessions:
                started = time.perf_counter()
                r = client.get(b + "/x", headers={"X-Session-Token": token})
                misses.append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
                r = client.delete(
                    a + f"/admin/sessions/{sid}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
                )
                assert r.status_code == 204, r.text
                returned = time.perf_counter()
                while client.get(b + "/x", headers={"X-Session-Token": token}).status_code != 401:
                    if time.perf_counter() - returned > 5:
                        raise SystemExit(f"session {sid} still admitted at B after 5 s")
                delays.append(time.perf_counter() - returned)
        delays.sort()
        p99 = delays[max(0, int(len(delays) * 0.99) - 1)]
        med, worst = statistics.median(delays), delays[-1]
        print(f"revocations: {len(delays)}")
        print(
            f"cache miss at B (whoami to the fake): median {statistics.median(misses) * 1e3:.1f} ms"
        )
        print(
            f"propagation: median {med * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
            f"max {worst * 1e3:.1f} ms"
        )
        print(
            f"| propagation (revoke at A returns → B refuses), {len(delays)} revocations "
            f"| {med * 1e3:.1f} ms | {p99 * 1e3:.1f} ms | {worst * 1e3:.1f} ms |"
        )
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
