"""The gate worker's RSS with 100,000 cached sessions: bench.py's memory step, on its own.

The same nginx (backend and whoami fake, a fresh session id per credential), the same gate
settings (granian, one worker, metrics on, `cache.max_entries: 200000`) and the same fill as
`bench.py`; the worker's RSS is read on a fresh process before the fill and after it. With
several `--tree NAME=SRC` (a `src` directory each, e.g. an older commit's `git archive`), the
trees run interleaved, round after round, so an A/B is measured in the same minutes.

    python bench/memory.py --rounds 2
    python bench/memory.py --tree base=/tmp/base/src --tree new=src --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.bench import (  # noqa: E402 (after the path it is found on)
    BENCH_SECRET,
    PYTHON,
    Procs,
    fill_cache,
    free_port,
    gate_config,
    nginx_conf,
    rss_mb,
    wait_port,
    whoami_calls,
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=SRC: run the gate from this source directory (default: this checkout's)",
    )
    args = parser.parse_args()
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(HERE.parent / "src")]]
    procs = Procs()
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="sessiongate-memory-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        names = ("backend", "whoami", "plain", "authreq", "authreq_nocache", "authreq_gate")
        ports = {k: free_port() for k in (*names, "decisions")}
        try:
            procs.start(["nginx", "-c", str(nginx_conf(work, ports))])
            for name in names:
                wait_port(ports[name])
            backend = f"http://127.0.0.1:{ports['backend']}"
            for rnd in range(args.rounds):
                for name, src in trees if rnd % 2 == 0 else trees[::-1]:
                    port = free_port()
                    config = gate_config(work, ports, port, backend)
                    env = dict(os.environ, SESSIONGATE_SECRET=BENCH_SECRET)
                    env["PYTHONPATH"] = str(Path(src).resolve())
                    proc = procs.start(
                        [PYTHON, "-m", "sessiongate.cli", "serve", "--config", str(config)],
                        env=env,
                        cwd=str(HERE.parent),
                    )
                    try:
                        wait_port(port)
                        time.sleep(1)
                        base = rss_mb(proc.pid)[0]
                        before = whoami_calls(work)
                        fill_cache(f"http://127.0.0.1:{port}/", work, args.sessions)
                        after = rss_mb(proc.pid)[0]
                        calls = whoami_calls(work) - before
                    finally:
                        procs.stop(proc)
                    figures[name].append((base, after))
                    print(
                        f"round {rnd} {name:<12} before {base:6.1f} MB  after {after:6.1f} MB  "
                        f"({calls} sessions, {(after - base) * 2**20 / calls:,.0f} B each)",
                        flush=True,
                    )
        finally:
            procs.stop_all()
    for name, runs in figures.items():
        befores, afters = [b for b, _ in runs], [a for _, a in runs]
        print(
            f"{name:<12} before {min(befores):.1f}-{max(befores):.1f} MB, "
            f"after {min(afters):.1f}-{max(afters):.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
