"""Fixtures for the gate's tests (defined in conftest_gate.py, shared with tests/reliability)."""

from conftest_gate import make_stack, stack  # noqa: F401  (fixtures, re-exported)
from sessions_page_stack import make_page_stack  # noqa: F401  (a fixture, re-exported)
