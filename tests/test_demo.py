"""The README's first command: `sessiongate demo` starts a working stack a person can log into."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SCRIPT = Path(sys.executable).with_name("sessiongate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def demo():
    ports = [_free_port() for _ in range(4)]
    proc = subprocess.Popen(
        [
            str(SCRIPT),
            "demo",
            "--port",
            str(ports[0]),
            "--kratos-port",
            str(ports[1]),
            "--kratos-admin-port",
            str(ports[2]),
            "--app-port",
            str(ports[3]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "curl" in line:
                break
        gate = f"http://127.0.0.1:{ports[0]}"
        while time.monotonic() < deadline:
            try:
                if httpx.get(gate + "/health/alive", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield gate, f"http://127.0.0.1:{ports[1]}", "".join(lines)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_demo_prints_a_working_curl_line(demo) -> None:
    _, _, output = demo
    match = re.search(r"curl -H 'X-Session-Token: (ory_st_\w+)' (\S+)", output)
    assert match, output
    r = httpx.get(match.group(2), headers={"X-Session-Token": match.group(1)})
    assert r.status_code == 200
    assert "Hello, alice@example.com!" in r.text


def test_demo_browser_login_flow_greets_the_user(demo) -> None:
    gate, kratos, _ = demo
    with httpx.Client(timeout=5) as browser:
        r = browser.get(gate + "/reports?year=2026", headers={"Accept": "text/html"})
        assert r.status_code == 303
        login = r.headers["location"]
        assert login.startswith(kratos + "/self-service/login/browser?return_to=")
        page = browser.get(login)
        assert page.status_code == 200
        assert 'name="password"' in page.text
        bad = browser.post(
            kratos + "/self-service/login",
            data={
                "identifier": "alice@example.com",
                "password": "wrong",
                "return_to": gate + "/reports?year=2026",
            },
        )
        assert bad.status_code == 400
        assert "credentials are invalid" in bad.text
        ok = browser.post(
            kratos + "/self-service/login",
            data={
                "identifier": "alice@example.com",
                "password": "demo",
                "return_to": gate + "/reports?year=2026",
            },
        )
        assert ok.status_code == 303
        assert ok.headers["location"] == gate + "/reports?year=2026"
        assert "ory_kratos_session" in browser.cookies
        home = browser.get(ok.headers["location"], headers={"Accept": "text/html"})
        assert home.status_code == 200
        assert "Hello, alice@example.com!" in home.text


def test_demo_login_refuses_foreign_return_to(demo) -> None:
    _, kratos, _ = demo
    r = httpx.post(
        kratos + "/self-service/login",
        data={
            "identifier": "alice@example.com",
            "password": "demo",
            "return_to": "https://evil.example/",
        },
    )
    assert r.status_code == 303
    assert not r.headers["location"].startswith("https://evil.example")


def test_demo_app_links_to_the_sessions_page(demo) -> None:
    gate, kratos, output = demo
    assert f"{gate}/.sessiongate/sessions" in output
    with httpx.Client(timeout=5) as browser:
        ok = browser.post(
            kratos + "/self-service/login",
            data={"identifier": "alice@example.com", "password": "demo", "return_to": gate + "/"},
            headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Firefox/133.0"},
        )
        assert ok.status_code == 303
        home = browser.get(gate + "/", headers={"Accept": "text/html"})
        assert '<a href="/.sessiongate/sessions">Your sessions</a>' in home.text
        page = browser.get(gate + "/.sessiongate/sessions", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert "This device" in page.text
        assert "Firefox 133 on Linux" in page.text
        assert f'<a href="{gate}/">Back to the app</a>' in page.text
