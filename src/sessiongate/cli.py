"""The `sessiongate` command line: one sub-command per way of running the product."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path


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
    for warning in config_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    print("configuration OK")
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
    check.set_defaults(func=_check_config)

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
