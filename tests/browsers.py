"""Debian's chromium for the browser tests, driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000


def launch_options() -> dict[str, Any]:
    """`chromium.launch(**launch_options())`; fails the test when chromium is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's chromium "
            "(apt-get install chromium; scripts/test does this). Playwright must not download one."
        )
    return {
        "executable_path": CHROMIUM,
        "headless": True,
        "args": CHROMIUM_ARGS,
        "timeout": TIMEOUT_MS,
    }
