"""Real `redis-server` processes for the shared-mode tests: start, stall, kill, restart empty.

Each server runs Debian's /usr/bin/redis-server on a free loopback port, in its own temp dir,
without persistence (so a restart is empty, as a Redis that lost its data). Waits are bounded;
every process is killed when the `redis_servers` fixture (or `RedisServers.close()`) ends.

    def test_x(redis_servers):
        r = redis_servers.start()            # RedisServer: .url, .port, .pid
        r.stop(); r.cont()                   # SIGSTOP / SIGCONT (a stalled Redis)
        r.kill()                             # SIGKILL
        r.restart()                          # a fresh, empty server on the same port
        r.cli("DEBUG", "SLEEP", "0.5")       # a slow server (answers nothing for 0.5 s)
        replica = redis_servers.start(replica_of=r)
        sentinel = redis_servers.start(sentinel_of=r)   # master name: mymaster
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.5) -> bool:
    """A raw PING (no client library: this only waits for the server to listen)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        password: str | None = None,
        replica_of: RedisServer | None = None,
        sentinel_of: RedisServer | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.dir = directory
        self.sentinel_of = sentinel_of
        self.port = port
        self.password = password
        self.replica_of = replica_of
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _args(self) -> list[str]:
        args = [REDIS_SERVER]
        if self.sentinel_of is not None:
            # a sentinel needs a writable config file, first on the command line
            conf = self.dir / "sentinel.conf"
            master = self.sentinel_of
            lines = [f"sentinel monitor mymaster 127.0.0.1 {master.port} 1"]
            if master.password:
                lines.append(f"sentinel auth-pass mymaster {master.password}")
            conf.write_text("\n".join(lines) + "\n")
            args += [str(conf), "--sentinel"]
        args += [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.sentinel_of is None:
            args += ["--save", "", "--appendonly", "no"]  # a restart is empty
            # `cli("DEBUG", "SLEEP", "0.5")`: a Redis slower than shared.timeout
            args += ["--enable-debug-command", "local"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
            if self.replica_of.password:
                args += ["--masterauth", self.replica_of.password]
        return args + list(self.extra)

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.stopped = False
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                logfile = self.dir / "redis.log"
                log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a stalled Redis)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        """SIGKILL: connections reset, the port refuses until `restart()`."""
        if self.proc is None:
            return
        if self.stopped:
            self.cont()
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL is not ignorable
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RedisServer:
        """A new, empty server on the same port (a Redis that restarted without its data)."""
        self.kill()
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the port may linger for a moment after the kill
            try:
                return self.start()
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def cli(self, *args: str) -> str:
        """Run one command with redis-cli (bounded), e.g. `cli("FLUSHALL")`."""
        cmd = ["redis-cli", "-p", str(self.port)]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        out = subprocess.run([*cmd, *args], capture_output=True, timeout=10, check=True, text=True)
        return out.stdout.strip()


class RedisServers:
    """Every server a test started; `close()` kills them all and removes their directories."""

    def __init__(self, root: Path | None = None) -> None:
        self._tmp = None if root is not None else tempfile.mkdtemp(prefix="sg-redis-")
        self.root = root if root is not None else Path(self._tmp or ".")
        self.servers: list[RedisServer] = []

    def start(
        self,
        *,
        password: str | None = None,
        replica_of: RedisServer | None = None,
        sentinel_of: RedisServer | None = None,
        extra: tuple[str, ...] = (),
        port: int | None = None,
    ) -> RedisServer:
        """A new server; `replica_of` makes it a replica, `sentinel_of` a Redis Sentinel
        watching that server as master `mymaster`."""
        port = port or free_port()
        server = RedisServer(
            self.root / f"redis-{port}",
            port,
            password=password,
            replica_of=replica_of,
            sentinel_of=sentinel_of,
            extra=extra,
        )
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[RedisServers]:
    if not Path(REDIS_SERVER).exists():
        pytest.fail("redis-server is not installed (scripts/test installs it)")
    servers = RedisServers(tmp_path / "redis")
    try:
        yield servers
    finally:
        servers.close()
