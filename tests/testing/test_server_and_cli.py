"""The fake over real sockets: `FakeKratosServer`, the pytest plugin fixtures, and the
`sessiongate fake-kratos` command line, each on free 127.0.0.1 ports.

Every wait is bounded and every subprocess is terminated (then killed) in a `finally`.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from sessiongate.testing import FakeKratosServer, KratosFake
from spec_check import check_response

WHOAMI_401 = (
    b'{"error":{"code":401,"status":"Unauthorized",'
    b'"reason":"No valid session credentials found in the request.",'
    b'"message":"The request could not be authorized"}}\n'  # herodot json.go:190 Encode
)
TOKEN_LINE = re.compile(r"^ +X-Session-Token: (ory_st_[A-Za-z0-9]{32})$", re.MULTILINE)
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def checked() -> httpx.Client:
    """A real-socket client whose every response goes through the spec and SDK check."""
    return httpx.Client(timeout=5.0, event_hooks={"response": [check_response]})


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(url + "/health/alive", timeout=2.0)
    except httpx.TransportError:
        return True
    return False


# -- FakeKratosServer ---------------------------------------------------------------------------


def test_two_port_server_whoami_over_a_real_socket():
    with FakeKratosServer() as server, checked() as client:
        public = urlparts(server.public_url)
        admin = urlparts(server.admin_url)
        assert public[0] == admin[0] == "127.0.0.1"
        assert public[1] != admin[1]
        alice = server.fake.login("alice@example.com")
        r = client.get(
            server.public_url + "/sessions/whoami", headers={"X-Session-Token": alice.token}
        )
        assert r.status_code == 200
        assert r.json()["id"] == alice.id
        assert r.json()["identity"]["traits"]["email"] == "alice@example.com"
        assert r.headers["x-kratos-authenticated-identity-id"] == alice.identity_id
        r = client.get(server.public_url + "/sessions/whoami", headers={"X-Session-Token": "nope"})
        assert r.status_code == 401
        assert r.content == WHOAMI_401
        public_url = server.public_url
    assert refuses_connections(public_url)


def test_two_port_server_admin_lives_on_its_own_port():
    with FakeKratosServer() as server, checked() as client:
        alice = server.fake.login("alice@example.com")
        r = client.get(server.admin_url + "/admin/sessions")
        assert r.status_code == 200
        assert [s["id"] for s in r.json()] == [alice.id]
        # the admin port adds the /admin prefix itself (CONTRACT §1)
        r = httpx.get(f"{server.admin_url}/sessions/{alice.id}", timeout=5.0)
        assert r.status_code == 200
        assert r.json()["id"] == alice.id
        # the public port does not serve admin routes in two-port mode
        r = httpx.get(server.public_url + "/admin/sessions", timeout=5.0)
        assert r.status_code == 404


def test_two_port_server_logout_url_points_at_its_real_port():
    with FakeKratosServer() as server, checked() as client:
        alice = server.fake.login("alice@example.com")
        cookie = {"Cookie": server.fake.cookie_header(alice)}
        r = client.get(
            server.public_url + "/self-service/logout/browser",
            headers={"Accept": "application/json", **cookie},
        )
        assert r.status_code == 200
        logout_url = r.json()["logout_url"]
        assert logout_url.startswith(server.public_url + "/self-service/logout?")
        r = client.get(logout_url, headers={"Accept": "application/json", **cookie})
        assert r.status_code == 204
        assert len(r.headers.get_list("set-cookie")) >= 2
        assert not server.fake.is_session_active(alice.id)


def test_one_port_server_with_api_key_guards_admin():
    with FakeKratosServer(api_key="ory_pat_test_key") as server, checked() as client:
        assert server.admin_url == server.public_url
        alice = server.fake.login("alice@example.com")
        url = server.public_url + "/admin/sessions"
        assert client.get(url).status_code == 401
        bad = client.get(url, headers={"Authorization": "Bearer ory_pat_wrong"})
        assert bad.status_code == 401
        r = client.get(url, headers={"Authorization": "Bearer ory_pat_test_key"})
        assert r.status_code == 200
        assert [s["id"] for s in r.json()] == [alice.id]
        r = client.get(
            server.public_url + "/sessions/whoami", headers={"X-Session-Token": alice.token}
        )
        assert r.status_code == 200


def test_server_on_requested_ports():
    public_port, admin_port = free_port(), free_port()
    with FakeKratosServer(public_port=public_port, admin_port=admin_port) as server:
        assert server.public_url == f"http://127.0.0.1:{public_port}"
        assert server.admin_url == f"http://127.0.0.1:{admin_port}"
        assert httpx.get(server.admin_url + "/health/ready", timeout=5.0).status_code == 200


def urlparts(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    assert parsed.port is not None
    return parsed.host, parsed.port


# -- pytest plugin fixtures ---------------------------------------------------------------------


def test_plugin_kratos_server_fixture(kratos_server):
    assert isinstance(kratos_server, FakeKratosServer)
    bob = kratos_server.fake.login("bob@example.com")
    with checked() as client:
        r = client.get(
            kratos_server.public_url + "/sessions/whoami",
            headers={"Cookie": kratos_server.fake.cookie_header(bob)},
        )
        assert r.status_code == 200
        assert r.json()["id"] == bob.id
        r = client.get(f"{kratos_server.admin_url}/admin/sessions/{bob.id}")
        assert r.status_code == 200


async def test_plugin_kratos_fake_fixture(kratos_fake):
    assert isinstance(kratos_fake, KratosFake)
    assert kratos_fake.public_url == "http://127.0.0.1:4433"
    alice = kratos_fake.login("alice@example.com")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=kratos_fake), base_url=kratos_fake.public_url
    ) as client:
        r = await client.get("/sessions/whoami", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
        assert r.json()["id"] == alice.id
        r = await client.get("/sessions/whoami")
        assert r.status_code == 401
        assert r.content == WHOAMI_401


def test_plugin_fixtures_are_fresh_per_test(kratos_fake, kratos_server):
    assert kratos_fake.store.sessions == {}
    assert kratos_server.fake.store.sessions == {}


# -- the `sessiongate fake-kratos` command line -------------------------------------------------


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("sessiongate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "sessiongate.cli"]


class CliProcess:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        for stream, sink in ((proc.stdout, self.stdout), (proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in iter(stream.readline, ""):
            sink.append(line)
            if sink is self.stdout:
                self._lines.put(line)

    def read_until(self, pattern: str, timeout: float = START_TIMEOUT) -> str:
        """Stdout up to and including the first line containing `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            seen = "".join(self.stdout)
            if pattern in seen:
                return seen
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.proc.poll() is not None and self._lines.empty()):
                pytest.fail(
                    f"{pattern!r} not printed; rc={self.proc.poll()} "
                    f"stdout={seen!r} stderr={''.join(self.stderr)!r}"
                )
            with suppress(queue.Empty):
                self._lines.get(timeout=min(remaining, 0.2))

    def wait_serving(self, *urls: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = list(urls)
        while pending:
            if self.proc.poll() is not None:
                pytest.fail(f"CLI exited with {self.proc.returncode}: {''.join(self.stderr)!r}")
            try:
                if httpx.get(pending[0] + "/health/alive", timeout=1.0).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{pending[0]} not serving after {timeout}s")
            time.sleep(0.05)


@contextmanager
def run_cli(*args: str, env: dict[str, str] | None = None) -> Iterator[CliProcess]:
    proc = subprocess.Popen(
        [*cli_command(), "fake-kratos", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        yield CliProcess(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def run_cli_to_exit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli_command(), "fake-kratos", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_prints_tokens_that_work_on_whoami():
    port, admin_port = free_port(), free_port()
    public = f"http://127.0.0.1:{port}"
    admin = f"http://127.0.0.1:{admin_port}"
    with run_cli("--port", str(port), "--admin-port", str(admin_port)) as cli:
        out = cli.read_until("Try:")
        tokens = TOKEN_LINE.findall(out)
        assert len(tokens) == 3  # demo seed: alice once, bob twice
        assert f"public API: {public}" in out
        assert f"admin API: {admin}" in out
        cli.wait_serving(public, admin)
        with checked() as client:
            r = client.get(public + "/sessions/whoami", headers={"X-Session-Token": tokens[0]})
            assert r.status_code == 200
            body = r.json()
            assert body["active"] is True
            assert body["identity"]["traits"]["email"] == "alice@example.com"
            r = client.get(
                public + "/sessions/whoami",
                headers={"X-Session-Token": "ory_st_" + "0" * 32},
            )
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/json"
            assert r.content == WHOAMI_401
            r = client.get(admin + "/admin/sessions")
            assert r.status_code == 200
            assert len(r.json()) == 3


def test_cli_printed_cookie_works(tmp_path):
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    with run_cli("--port", str(port), "--admin-port", str(free_port())) as cli:
        out = cli.read_until("Try:")
        cookie = re.search(r"Cookie: (ory_kratos_session=\S+)", out)
        assert cookie is not None
        cli.wait_serving(public)
        with checked() as client:
            r = client.get(public + "/sessions/whoami", headers={"Cookie": cookie.group(1)})
            assert r.status_code == 200
            assert r.json()["identity"]["traits"]["email"] == "alice@example.com"


SEED = """\
identities:
  - email: carol@example.org
    traits: {name: Carol}
    sessions: [{aal: aal1, user_agent: "carol-laptop"}]
  - traits: {email: dave@example.org}
    available_aal: aal2
    sessions: [{aal: aal2, expires_in: 600}, {aal: aal1}]
  - email: erin@example.org
"""


def test_cli_seed_file_creates_those_users(tmp_path):
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED)
    port, admin_port = free_port(), free_port()
    public = f"http://127.0.0.1:{port}"
    admin = f"http://127.0.0.1:{admin_port}"
    with run_cli("--port", str(port), "--admin-port", str(admin_port), "--seed", str(seed)) as cli:
        out = cli.read_until("Try:")
        assert "alice@example.com" not in out
        assert "bob@example.com" not in out
        tokens = TOKEN_LINE.findall(out)
        assert len(tokens) == 3
        assert out.count("carol@example.org  session=") == 1
        assert out.count("dave@example.org  session=") == 2
        cli.wait_serving(public, admin)
        with checked() as client:
            r = client.get(public + "/sessions/whoami", headers={"X-Session-Token": tokens[0]})
            assert r.status_code == 200
            carol = r.json()
            assert carol["identity"]["traits"] == {"name": "Carol", "email": "carol@example.org"}
            assert carol["authenticator_assurance_level"] == "aal1"
            r = client.get(public + "/sessions/whoami", headers={"X-Session-Token": tokens[1]})
            assert r.status_code == 200
            assert r.json()["identity"]["traits"]["email"] == "dave@example.org"
            assert r.json()["authenticator_assurance_level"] == "aal2"
            # dave has a second factor, so his aal1 session fails whoami's highest_available
            r = client.get(public + "/sessions/whoami", headers={"X-Session-Token": tokens[2]})
            assert r.status_code == 403
            assert r.json()["error"]["id"] == "session_aal2_required"
            r = client.get(admin + "/admin/sessions", params={"expand": "identity"})
            assert r.status_code == 200
            emails = sorted(s["identity"]["traits"]["email"] for s in r.json())
            assert emails == ["carol@example.org", "dave@example.org", "dave@example.org"]


def test_cli_api_key_env_puts_admin_behind_bearer_on_public_port():
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    key = "ory_pat_cli_test_key"
    env = {"SG_TEST_KRATOS_KEY": key}
    with run_cli("--port", str(port), "--api-key-env", "SG_TEST_KRATOS_KEY", env=env) as cli:
        out = cli.read_until("Try:")
        assert f"admin API: {public}/admin" in out
        assert key not in out  # the key is named, never printed
        tokens = TOKEN_LINE.findall(out)
        cli.wait_serving(public)
        with checked() as client:
            url = public + "/admin/sessions"
            assert client.get(url).status_code == 401
            assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
            r = client.get(url, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
            assert len(r.json()) == len(tokens) == 3
            r = client.get(public + "/sessions/whoami", headers={"X-Session-Token": tokens[0]})
            assert r.status_code == 200


UNSET_KEY_ARGS = ("--api-key-env", "SG_TEST_UNSET_KEY")


def test_cli_unset_api_key_env_exits_2():
    env = {k: v for k, v in os.environ.items() if k != "SG_TEST_UNSET_KEY"}
    result = subprocess.run(
        [*cli_command(), "fake-kratos", "--port", str(free_port()), *UNSET_KEY_ARGS],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "SG_TEST_UNSET_KEY" in result.stderr
    assert "empty or unset" in result.stderr
    assert "Traceback" not in result.stderr
    assert "X-Session-Token" not in result.stdout


def test_cli_empty_api_key_env_exits_2():
    result = run_cli_to_exit(
        "--port",
        str(free_port()),
        "--api-key-env",
        "SG_TEST_EMPTY_KEY",
        env={"SG_TEST_EMPTY_KEY": ""},
    )
    assert result.returncode == 2
    assert "SG_TEST_EMPTY_KEY" in result.stderr


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("identities:\n  - emali: typo@example.org\n", id="unknown-key"),
        pytest.param("identities:\n  - state: sleeping\n", id="bad-enum"),
        pytest.param("identities: [\n  {email: broken\n", id="malformed-yaml"),
        pytest.param("- just\n- a list\n", id="not-a-mapping"),
    ],
)
def test_cli_bad_seed_file_exits_2(tmp_path, content):
    seed = tmp_path / "seed.yaml"
    seed.write_text(content)
    result = run_cli_to_exit("--port", str(free_port()), "--seed", str(seed))
    assert result.returncode == 2, result.stderr
    assert "cannot load seed file" in result.stderr
    assert "Traceback" not in result.stderr
    assert "X-Session-Token" not in result.stdout


def test_cli_missing_seed_file_exits_2(tmp_path):
    result = run_cli_to_exit("--port", str(free_port()), "--seed", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot load seed file" in result.stderr
    assert "nope.yaml" in result.stderr
