"""Regenerate `sessions.json` from Kratos' published OpenAPI document.

    python tests/kratos_spec/extract.py [path/to/kratos/spec/api.json]

The default input is `../shared/kratos/openapi.json` beside the checkout (a byte copy of
Kratos' `spec/api.json` at the tag below). The output keeps, for the session and logout
operations only, every response and every schema they reach, with the validation keywords
untouched: only prose (`description`, `summary`, `title`, `example`, `tags`) is dropped, so
the checks in `tests/spec_check.py` are exactly as strict as against the whole document.
The repository needs only the output; this script needs the input.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: `../shared/kratos/` beside the checkout (or beside a worktree's parent folder).
CANDIDATES = [d / "shared" / "kratos" / "openapi.json" for d in HERE.parents[2:4]]
OUTPUT = HERE / "sessions.json"

SOURCE = {
    "repository": "github.com/ory/kratos",
    "tag": "v26.2.0",
    "commit": "9d7085948039ffb8960160d4979f71527b5cf4d5",
    "file": "spec/api.json",
}
#: Every path the fake serves (CONTRACT.md §4).
PATHS = (
    "/admin/identities/{id}/sessions",
    "/admin/sessions",
    "/admin/sessions/{id}",
    "/admin/sessions/{id}/extend",
    "/self-service/logout",
    "/self-service/logout/api",
    "/self-service/logout/browser",
    "/sessions",
    "/sessions/token-exchange",
    "/sessions/whoami",
    "/sessions/{id}",
)
PROSE = {"description", "summary", "title", "example", "examples", "tags", "externalDocs"}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def _strip(node: Any, refs: set[str]) -> Any:
    """`node` without prose keywords; collects every `$ref` it meets. Keys under `properties`
    are property names (a property may be called `description`), so those are all kept."""
    if isinstance(node, list):
        return [_strip(n, refs) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref":
            refs.add(value)
            out[key] = value
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _strip(sub, refs) for name, sub in value.items()}
        elif key not in PROSE and not key.startswith("x-"):
            out[key] = _strip(value, refs)
    return out


def extract(raw: dict[str, Any], sha256: str) -> dict[str, Any]:
    refs: set[str] = set()
    paths: dict[str, Any] = {}
    for template in PATHS:
        item = raw["paths"][template]
        paths[template] = {
            method: {"operationId": op["operationId"], "responses": _strip(op["responses"], refs)}
            for method, op in item.items()
            if method in METHODS
        }
    components: dict[str, dict[str, Any]] = {"responses": {}, "schemas": {}}
    pending = set(refs)
    while pending:
        ref = pending.pop()
        match = re.fullmatch(r"#/components/(responses|schemas)/(.+)", ref)
        assert match, f"unexpected $ref {ref}"
        kind, name = match.groups()
        if name in components[kind]:
            continue
        found: set[str] = set()
        components[kind][name] = _strip(raw["components"][kind][name], found)
        pending |= found - refs
        refs |= found
    for kind in components:
        components[kind] = dict(sorted(components[kind].items()))
    return {
        "x-source": {**SOURCE, "sha256": sha256},
        "openapi": raw["openapi"],
        "paths": paths,
        "components": components,
    }


def main(argv: list[str]) -> None:
    found = [c for c in CANDIDATES if c.exists()]
    if len(argv) < 2 and not found:
        sys.exit(f"no Kratos spec given and none at {CANDIDATES[0]}")
    source = Path(argv[1]) if len(argv) > 1 else found[0]
    data = source.read_bytes()
    out = extract(json.loads(data), hashlib.sha256(data).hexdigest())
    OUTPUT.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"{OUTPUT}: {len(out['paths'])} paths, {len(out['components']['schemas'])} schemas")


if __name__ == "__main__":
    main(sys.argv)
