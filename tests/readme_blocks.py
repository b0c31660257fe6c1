"""The README's marked code blocks: configs that tests run or check, so docs and tests agree.

A block is the fenced code block right after a `<!-- forward-auth-config: NAME -->` (or
`forward-auth-gate: NAME`) comment line.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(kind: str, name: str) -> str:
    """The body of the fenced block marked `<!-- KIND: NAME -->` in README.md."""
    text = README.read_text(encoding="utf-8")
    pattern = rf"^<!-- {re.escape(kind)}: {re.escape(name)} -->\n```[a-z]*\n(.*?)^```$"
    found = re.findall(pattern, text, re.M | re.S)
    assert len(found) == 1, f"README must hold exactly one block marked {kind}: {name}"
    return found[0]
