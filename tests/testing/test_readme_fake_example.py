"""The README's example test module for the Kratos fake runs, as a user's own pytest would run
it: in a separate pytest session that finds the fixtures through the installed plugin."""

from __future__ import annotations

import re
from pathlib import Path

pytest_plugins = ["pytester"]

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_fake_example_module_passes(pytester) -> None:  # type: ignore[no-untyped-def]
    [source] = [
        block
        for block in re.findall(r"```python\n(.*?)```", README, re.S)
        if "make_kratos_fake(SEED)" in block
    ]
    pytester.makepyfile(test_user_app=source)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-q", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=1)
