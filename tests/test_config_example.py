"""config.example.yaml and the README document every setting, with the real defaults."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from sessiongate.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(_keys(annotation, f"{prefix}{name}."))
        else:
            out.append(prefix + name)
    return out


def test_example_file_is_valid_and_equals_the_defaults() -> None:
    assert load_settings(ROOT / "config.example.yaml", environ={}) == Settings()


def test_every_setting_is_in_the_example_and_the_readme() -> None:
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    readme = (ROOT / "README.md").read_text()
    for key in _keys(Settings):
        node = example
        for part in key.split("."):
            assert part in node, f"{key} missing from config.example.yaml"
            node = node[part]
        assert f"`{key}`" in readme, f"{key} not documented in the README"
