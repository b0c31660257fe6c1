"""`sessiongate check-config --online`: Kratos reachable, and (identity_token source kratos) the
tokenizer template known to it, asked of a real (fake) Kratos server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sessiongate.testing import FakeKratosServer, TokenizeTemplate
from test_cli import clean_env, free_port, run_cli, write_config


@pytest.fixture
def kratos() -> Iterator[FakeKratosServer]:
    server = FakeKratosServer(tokenize_templates={"app": TokenizeTemplate()}).start()
    yield server
    server.stop()


def config(tmp_path: Path, public_url: str, template: str) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "ory": {"public_url": public_url},
            "identity_token": {"enabled": True, "source": "kratos", "tokenize_as": template},
        },
    )


def test_a_known_template_passes(kratos: FakeKratosServer, tmp_path: Path) -> None:
    token = kratos.fake.login("alice@example.com").token
    result = run_cli(
        "check-config",
        "--config",
        str(config(tmp_path, kratos.public_url, "app")),
        "--online",
        "--session-token-env",
        "CHECK_TOKEN",
        env=clean_env(CHECK_TOKEN=token),
    )
    assert result.returncode == 0, result.stderr
    assert "configuration OK (Kratos checked online)" in result.stdout


def test_a_template_kratos_refuses_is_an_error(kratos: FakeKratosServer, tmp_path: Path) -> None:
    token = kratos.fake.login("alice@example.com").token
    result = run_cli(
        "check-config",
        "--config",
        str(config(tmp_path, kratos.public_url, "nope")),
        "--online",
        "--session-token-env",
        "CHECK_TOKEN",
        env=clean_env(CHECK_TOKEN=token),
    )
    assert result.returncode == 2
    assert (
        "identity_token.tokenize_as: Kratos refuses template 'nope': "
        'Unable to find tokenizer template "nope".'
    ) in result.stderr


def test_without_a_session_the_template_is_not_checked(
    kratos: FakeKratosServer, tmp_path: Path
) -> None:
    result = run_cli(
        "check-config", "--config", str(config(tmp_path, kratos.public_url, "nope")), "--online"
    )
    assert result.returncode == 0, result.stderr
    assert "warning: identity_token.tokenize_as: template 'nope' not checked" in result.stderr


def test_an_unreachable_kratos_is_an_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("check-config", "--config", str(config(tmp_path, url, "app")), "--online")
    assert result.returncode == 2
    assert f"ory.public_url: Kratos at {url} is not reachable" in result.stderr
    # offline, the same file is fine: nothing is asked
    assert run_cli("check-config", "--config", str(tmp_path / "config.yaml")).returncode == 0
