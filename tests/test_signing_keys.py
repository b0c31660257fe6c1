"""The identity token's keys file (signing_keys.py) as a user meets it: `sessiongate keys
generate`, and `check-config` refusing a file it cannot sign with, naming the key path."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from sessiongate.signing_keys import (
    KeysFileError,
    load_keys,
    new_private_jwk,
    thumbprint,
    write_keys_file,
)
from test_cli import run_cli, write_config

NOBODY = 65534


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users may enter (tmp_path's parents are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="sessiongate-keys-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config_for(directory: Path, keys: Path, **token: Any) -> Path:
    path = write_config(
        directory / "config.yaml",
        {
            "public_url": "https://gate.example.test",
            "identity_token": {"enabled": True, "keys_file": str(keys), **token},
        },
    )
    path.chmod(0o644)
    return path


def check(config: Path) -> tuple[int, str]:
    result = run_cli("check-config", "--config", str(config))
    return result.returncode, result.stderr


def test_keys_generate_writes_a_private_jwks_only_its_owner_reads(tmp_path: Path) -> None:
    out = tmp_path / "keys.json"
    result = run_cli("keys", "generate", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    (key,) = json.loads(out.read_text())["keys"]
    assert key["kid"] == result.stdout.strip() == thumbprint(key)
    assert key["alg"] == "ES256"  # the default
    assert "d" in key
    assert run_cli("check-config", "--config", str(config_for(tmp_path, out))).returncode == 0
    # never overwritten; --add publishes a second key (rotation), the first still signs
    again = run_cli("keys", "generate", "--out", str(out))
    assert again.returncode == 2
    assert "exists" in again.stderr
    added = run_cli("keys", "generate", "--out", str(out), "--add", "--alg", "EdDSA")
    assert added.returncode == 0, added.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    keys = load_keys(out)
    assert [k.alg for k in keys.keys] == ["ES256", "EdDSA"]
    assert keys.signing.kid == key["kid"]
    assert keys.keys[1].kid == added.stdout.strip()


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_generated_keys_sign_and_publish_only_public_parts(alg: str, tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    write_keys_file(path, {"keys": [new_private_jwk(alg)]})
    keys = load_keys(path)
    (public,) = keys.public_jwks()["keys"]
    assert public["alg"] == alg
    assert public["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(public)
    token = jwt.encode({"sub": "x"}, keys.signing.private, algorithm=alg)
    assert jwt.decode(token, jwt.PyJWK(public).key, algorithms=[alg]) == {"sub": "x"}


def _public_only(key: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in key.items() if k != "d"}


BAD_FILES: dict[str, tuple[Callable[[], Any], str]] = {
    "without private keys": (
        lambda: {"keys": [_public_only(new_private_jwk())]},
        "no private key in it",
    ),
    "without kid": (
        lambda: {"keys": [{k: v for k, v in new_private_jwk().items() if k != "kid"}]},
        "has no kid",
    ),
    "unsupported alg": (
        lambda: {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"}]},
        "alg 'HS256' is not supported",
    ),
    "alg of another key type": (
        lambda: {"keys": [{**new_private_jwk("EdDSA"), "alg": "ES256"}]},
        "alg ES256 needs kty EC",
    ),
    "not a JWKS": (lambda: {"kid": "x"}, "not a JWKS"),
    "not JSON": (lambda: "{not json", "not JSON"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_check_config_refuses_a_bad_keys_file_naming_the_key(case: str, tmp_path: Path) -> None:
    make, message = BAD_FILES[case]
    keys = tmp_path / "keys.json"
    content = make()
    keys.write_text(content if isinstance(content, str) else json.dumps(content))
    keys.chmod(0o600)
    code, err = check(config_for(tmp_path, keys))
    assert code == 2
    assert f"identity_token.keys_file: {keys}:" in err
    assert message in err


def test_check_config_refuses_a_missing_keys_file(tmp_path: Path) -> None:
    code, err = check(config_for(tmp_path, tmp_path / "absent.json"))
    assert code == 2
    assert "identity_token.keys_file:" in err
    assert "No such file" in err


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606, 0o601, 0o660, 0o620])
def test_check_config_refuses_a_keys_file_other_users_may_read(mode: int, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    write_keys_file(keys, {"keys": [new_private_jwk()]})
    keys.chmod(mode)
    code, err = check(config_for(tmp_path, keys))
    assert code == 2
    assert "identity_token.keys_file:" in err
    assert f"mode {mode:04o}" in err


def test_a_keys_file_its_group_may_only_read_is_accepted_and_kept_so(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    write_keys_file(keys, {"keys": [new_private_jwk()]})
    keys.chmod(0o640)
    group = NOBODY if os.geteuid() == 0 else os.getgid()  # root may give it any group
    os.chown(keys, -1, group)
    code, err = check(config_for(tmp_path, keys))
    assert code == 0, err
    # a rotation's --add keeps the file's mode and group: the gate's group still reads it
    added = run_cli("keys", "generate", "--out", str(keys), "--add")
    assert added.returncode == 0, added.stderr
    assert stat.S_IMODE(keys.stat().st_mode) == 0o640
    assert keys.stat().st_gid == group
    assert len(load_keys(keys).keys) == 2


def _load_as(uid: int, keys: Path) -> list[str]:
    """`load_keys` in a forked child running as `uid` (root reads anything; a gate runs as its
    own user). In-process, so the checkout itself need not be readable by that user."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, report the problems, exit
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            try:
                load_keys(keys)
                problems: list[str] = []
            except KeysFileError as exc:
                problems = exc.problems
            os.write(write, json.dumps(problems).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as out:
        data = out.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def test_an_unreadable_keys_file_is_refused_naming_the_key_path(shared_dir: Path) -> None:
    keys = shared_dir / "keys.json"
    write_keys_file(keys, {"keys": [new_private_jwk()]})  # 0600, ours
    if os.geteuid() == 0:  # root reads anything: ask as another user, as a gate would run
        problems = _load_as(NOBODY, keys)
    else:
        keys.chmod(0o000)
        with pytest.raises(KeysFileError) as err:
            load_keys(keys)
        problems = err.value.problems
    assert problems == [f"identity_token.keys_file: {keys}: cannot read it: Permission denied"]


def test_check_config_refuses_a_signing_kid_that_cannot_sign(tmp_path: Path) -> None:
    signer, published = new_private_jwk(), _public_only(new_private_jwk())
    keys = tmp_path / "keys.json"
    write_keys_file(keys, {"keys": [signer, published]})
    code, err = check(config_for(tmp_path, keys, signing_kid="unknown"))
    assert code == 2
    assert "identity_token.signing_kid: 'unknown' is not a kid" in err
    code, err = check(config_for(tmp_path, keys, signing_kid=published["kid"]))
    assert code == 2
    assert "identity_token.signing_kid:" in err
    assert "no private part" in err
    assert load_keys(keys).signing.kid == signer["kid"]  # the default: the first private key


def test_settings_problems_name_their_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        {"identity_token": {"enabled": True, "keys_file": "k.json", "claims": {"exp": "id"}}},
    )
    code, err = check(config)
    assert code == 2
    assert "identity_token.claims: 'exp' is set by the gate itself" in err
    config = write_config(tmp_path / "c.yaml", {"identity_token": {"enabled": True}})
    code, err = check(config)
    assert "identity_token.keys_file: required with source: gate" in err
    config = write_config(
        tmp_path / "c.yaml",
        {"identity_token": {"enabled": True, "source": "kratos", "keys_file": "k.json"}},
    )
    code, err = check(config)
    assert "identity_token.tokenize_as: required with source: kratos" in err
