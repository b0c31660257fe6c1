"""The `sessiongate` command line: one sub-command per way of running the product."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sessiongate.config import Settings


def _fake_kratos(args: argparse.Namespace) -> int:
    import uvicorn
    import yaml

    from sessiongate.testing.app import KratosFake
    from sessiongate.testing.seed import DEFAULT_SEED, apply_seed, load_seed

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(
                f"error: environment variable {args.api_key_env} is empty or unset", file=sys.stderr
            )
            return 2
    admin_port = args.admin_port or args.port + 1
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    admin_url = None if api_key else f"http://{args.host}:{admin_port}"
    fake = KratosFake(
        public_url=public_url,
        admin_url=admin_url,
        api_key=api_key,
        cookie_secure=not args.insecure_cookies,
    )
    try:
        seed = load_seed(Path(args.seed) if args.seed else DEFAULT_SEED)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # YAMLError is not a ValueError
        print(f"error: cannot load seed file: {exc}", file=sys.stderr)
        return 2
    created = apply_seed(fake, seed)

    print(f"Kratos fake (v26.2.0 contract) public API: {public_url}")
    if api_key:
        print(f"  admin API: {public_url}/admin (Authorization: Bearer ${args.api_key_env})")
    else:
        print(f"  admin API: {admin_url} (unauthenticated, as self-hosted Kratos)")
    print("Seeded sessions (test credentials of this fake only):")
    for who, sess in created:
        print(
            f"  {who}  session={sess.id}\n    X-Session-Token: {sess.token}\n"
            f"    Cookie: {fake.cookie_name}={sess.cookie}"
        )
    print(
        f"Try: curl -H 'X-Session-Token: {created[0][1].token}' {public_url}/sessions/whoami"
        if created
        else ""
    )
    sys.stdout.flush()

    servers = [
        uvicorn.Server(
            uvicorn.Config(
                fake, host=args.host, port=args.port, log_level=args.log_level, lifespan="off"
            )
        )
    ]
    if not api_key:
        servers.append(
            uvicorn.Server(
                uvicorn.Config(
                    fake.admin_app,
                    host=args.host,
                    port=admin_port,
                    log_level=args.log_level,
                    lifespan="off",
                )
            )
        )

    async def serve_all() -> None:
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(serve_all())
    return 0


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sessiongate.config import ConfigError, load_settings, runtime_problems

    try:
        settings = load_settings(args.config or None)
        problems = runtime_problems(settings)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        print(f"sessiongate: configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    return settings


def _check_config(args: argparse.Namespace) -> int:
    from sessiongate.config import config_warnings

    settings = _load(args)
    if settings is None:
        return 2
    warnings = config_warnings(settings)
    if args.online:
        token = None
        if args.session_token_env:
            token = os.environ.get(args.session_token_env) or None
            if token is None:
                print(
                    f"error: environment variable {args.session_token_env} is empty or unset",
                    file=sys.stderr,
                )
                return 2
        problems, notes = asyncio.run(_online_problems(settings, token))
        warnings += notes
        if problems:
            print(f"sessiongate: {len(problems)} problem(s) online:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("configuration OK" + (" (Kratos checked online)" if args.online else ""))
    return 0


async def _online_problems(
    settings: Settings, session_token: str | None
) -> tuple[list[str], list[str]]:
    """Is Kratos there, and (identity_token source kratos) does it know the template?

    whoami finds the session before it looks at `tokenize_as`, so the template is checked only
    with a session token of a test user (`--session-token-env`)."""
    import json

    from sessiongate.credentials import Credential
    from sessiongate.identity_token import kratos_token
    from sessiongate.kratos import KratosClient, KratosUnavailable

    ory = settings.ory
    template = settings.whoami_tokenize_as
    kratos = KratosClient.from_settings(settings)
    problems: list[str] = []
    notes: list[str] = []
    try:
        anonymous = KratosClient(ory.public_url, timeout=ory.timeout)
        try:
            answer = await anonymous.whoami(Credential("token", "sessiongate-check-config"))
        finally:
            await anonymous.aclose()
        if answer.status != 401:
            problems.append(
                f"ory.public_url: {ory.public_url}/sessions/whoami answered {answer.status} to "
                f"an unknown session token; Kratos answers 401"
            )
            return problems, notes
        if template is None:
            return problems, notes
        if session_token is None:
            notes.append(
                f"identity_token.tokenize_as: template {template!r} not checked: Kratos reads "
                f"it only for a valid session; pass --session-token-env NAME (a test user's "
                f"session token in that variable)"
            )
            return problems, notes
        answer = await kratos.whoami(Credential("token", session_token))
        if answer.status == 200:
            try:
                found = kratos_token(json.loads(answer.body))
            except ValueError:
                found = None
            if found is None:
                problems.append(
                    f"identity_token.tokenize_as: Kratos answered whoami without a token for "
                    f"template {template!r} (tokenize_as needs Kratos v1.1 or later)"
                )
        elif answer.status == 400:
            try:
                reason = json.loads(answer.body)["error"]["reason"]
            except (ValueError, KeyError, TypeError):
                reason = answer.body[:200].decode("utf-8", "replace")
            problems.append(
                f"identity_token.tokenize_as: Kratos refuses template {template!r}: {reason}"
            )
        else:
            problems.append(
                f"--session-token-env: whoami answered {answer.status} for that session token "
                f"(it must be a valid session of a test user); the template was not checked"
            )
    except KratosUnavailable as exc:
        problems.append(f"ory.public_url: Kratos at {ory.public_url} is not reachable ({exc})")
    finally:
        await kratos.aclose()
    return problems, notes


def _keys_generate(args: argparse.Namespace) -> int:
    import json

    from sessiongate.signing_keys import KeysFileError, load_keys, new_private_jwk, write_keys_file

    out = Path(args.out)
    jwks: dict = {"keys": []}
    like = None
    if args.add:
        try:
            load_keys(out)  # the file must be sound before a key is added to it
            jwks = json.loads(out.read_text(encoding="utf-8"))
            like = out.stat()  # the new file keeps its mode, owner and group
        except KeysFileError as exc:
            for problem in exc.problems:
                print(
                    f"error: {problem.removeprefix('identity_token.keys_file: ')}", file=sys.stderr
                )
            return 2
    elif out.exists():
        print(
            f"error: {out} exists; use --add to add a key to it (rotation), or another name",
            file=sys.stderr,
        )
        return 2
    key = new_private_jwk(args.alg)
    jwks["keys"].append(key)
    try:
        write_keys_file(out, jwks, like=like)
    except OSError as exc:
        print(f"error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(key["kid"])
    return 0


def _serve(args: argparse.Namespace) -> int:
    settings = _load(args)
    if settings is None:
        return 2
    from sessiongate.serve import StartupError, serve

    try:
        serve(settings, args.config or None)
    except StartupError as exc:
        print(f"sessiongate: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sessiongate.demo import run_demo

    return run_demo(
        host=args.host,
        gate_port=args.port,
        kratos_port=args.kratos_port,
        admin_port=args.kratos_admin_port,
        app_port=args.app_port,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sessiongate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    fake = sub.add_parser("fake-kratos", help="run the built-in Kratos fake with seeded users")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=4433, help="public API port (default 4433)")
    fake.add_argument(
        "--admin-port",
        type=int,
        default=0,
        help="admin API port (default: port + 1); not used with --api-key-env",
    )
    fake.add_argument(
        "--public-url",
        default="",
        help="base URL the fake puts in links (default http://HOST:PORT)",
    )
    fake.add_argument("--seed", default="", help="YAML seed file (default: demo users)")
    fake.add_argument(
        "--api-key-env", default="", help="one-port Ory Network mode: /admin needs Bearer $NAME"
    )
    fake.add_argument(
        "--insecure-cookies",
        action="store_true",
        help="leave Secure off the session cookie (plain-http demos)",
    )
    fake.add_argument("--log-level", default="warning")
    fake.set_defaults(func=_fake_kratos)

    serve = sub.add_parser("serve", help="run the gate in front of the protected app")
    serve.add_argument("--config", default="", help="YAML file (default: $SESSIONGATE_CONFIG)")
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate a configuration; exit 2 on problems")
    check.add_argument("--config", default="", help="YAML file (default: $SESSIONGATE_CONFIG)")
    check.add_argument(
        "--online",
        action="store_true",
        help="also ask Kratos: reachable, and the identity_token.tokenize_as template exists",
    )
    check.add_argument(
        "--session-token-env",
        default="",
        help="with --online: a variable holding a test user's session token (the template "
        "check needs a valid session)",
    )
    check.set_defaults(func=_check_config)

    keys = sub.add_parser("keys", help="signing keys for identity_token (a JWKS file)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_sub.add_parser(
        "generate", help="write a new private key to a JWKS file (mode 0600); prints its kid"
    )
    generate.add_argument("--out", required=True, help="the JWKS file (identity_token.keys_file)")
    generate.add_argument("--alg", default="ES256", choices=["ES256", "EdDSA", "RS256"])
    generate.add_argument(
        "--add",
        action="store_true",
        help="add the key to an existing file (rotation: published, not yet signing)",
    )
    generate.set_defaults(func=_keys_generate)

    demo = sub.add_parser("demo", help="Kratos fake + sample app + the gate, on 127.0.0.1")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=4455, help="the gate's port (default 4455)")
    demo.add_argument("--kratos-port", type=int, default=4433)
    demo.add_argument("--kratos-admin-port", type=int, default=4434)
    demo.add_argument("--app-port", type=int, default=8080)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
