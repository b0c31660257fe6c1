"""Fixtures for the reliability suite: the same real stack as tests/gate (gate_stack.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gate"))

from conftest_gate import gate_server, make_stack, make_stack_under, stack  # noqa: F401  (fixtures, re-exported)
