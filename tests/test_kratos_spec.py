"""The committed Kratos spec extract is what its script makes of Kratos' published document."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "kratos_spec"))
import extract

FULL = [c for c in extract.CANDIDATES if c.exists()]


def test_the_extract_records_its_source_and_holds_every_served_path() -> None:
    data = json.loads(extract.OUTPUT.read_text())
    assert data["x-source"]["tag"] == "v26.2.0"
    assert len(data["x-source"]["commit"]) == 40
    assert set(data["paths"]) == set(extract.PATHS)
    # Every $ref resolves inside the file: nothing points outside the repository.
    text = extract.OUTPUT.read_text()
    for kind, names in data["components"].items():
        for name in names:
            text = text.replace(f'"#/components/{kind}/{name}"', '""')
    assert "#/components/" not in text


@pytest.mark.skipif(not FULL, reason="Kratos' full openapi.json is not beside this checkout")
def test_the_extract_is_regenerated_from_kratos_spec_unchanged() -> None:
    raw = FULL[0].read_bytes()
    assert (
        hashlib.sha256(raw).hexdigest()
        == json.loads(extract.OUTPUT.read_text())["x-source"]["sha256"]
    )
    fresh = extract.extract(json.loads(raw), hashlib.sha256(raw).hexdigest())
    assert fresh == json.loads(extract.OUTPUT.read_text())


def test_prose_is_dropped_but_a_property_named_description_is_kept() -> None:
    refs: set[str] = set()
    schema = {
        "description": "prose",
        "type": "object",
        "properties": {"description": {"type": "string", "title": "t"}},
        "required": ["description"],
    }
    assert extract._strip(schema, refs) == {
        "type": "object",
        "properties": {"description": {"type": "string"}},
        "required": ["description"],
    }
