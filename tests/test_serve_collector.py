"""The garbage collector in a serving process (serve.py, `tune_collector`): start-up's objects
frozen out of every scan, and young collections 20,000 allocations apart. Without it a full
collection over ~80,000 start-up objects ran ~2.5 times a second under load, up to 100 ms each
(bench/README.md, "The garbage collector"). Checked in a fresh interpreter, as a worker is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sessiongate.serve import COLLECT_AFTER

PROBE = """
import gc, json
from sessiongate.serve import gate_from_environment
before = [gc.get_freeze_count(), gc.get_threshold()]
gate_from_environment()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "threshold": gc.get_threshold()}))
"""


def test_a_worker_freezes_its_start_up_objects_and_collects_less_often(tmp_path: Path) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text(
        "ory: {public_url: 'http://127.0.0.1:9'}\n"
        "upstream: {url: 'http://127.0.0.1:9'}\n"
        "metrics: {enabled: false}\n"
    )
    env = {**os.environ, "SESSIONGATE_CONFIG": str(config)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["before"] == [0, [700, 10, 10]]  # CPython's defaults until the gate is built
    # the modules, settings and patterns of start-up: tens of thousands of objects
    assert seen["frozen"] > 10_000
    assert seen["threshold"] == [COLLECT_AFTER, 20, 20]
