"""Fixtures for the gate's tests (defined in conftest_gate.py, shared with tests/reliability)."""

from conftest_gate import gate_server, make_stack, make_stack_under, stack  # noqa: F401  (fixtures, re-exported)
from sessions_page_stack import make_page_stack  # noqa: F401  (a fixture, re-exported)
