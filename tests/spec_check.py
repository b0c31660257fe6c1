"""Checks every response against Kratos' published OpenAPI spec and the official `ory-client`.

`check_response(method, path, response)` finds the operation by method and path template,
picks the response schema by status (or `default`), validates the JSON body with an OpenAPI
3.0 validator, and parses it with the matching `ory-client` model. Tests route every response
through it by using the `kratos_client` fixtures (an httpx event hook), so no body the fake
emits escapes the check.

Where CONTRACT.md says Kratos' code and its spec disagree, the code wins; each such place is
patched into a copy of the spec below with the CONTRACT section that documents it.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from jsonschema import FormatChecker
from openapi_schema_validator import OAS30Validator
from ory_client.models.delete_my_sessions_count import DeleteMySessionsCount
from ory_client.models.generic_error import GenericError
from ory_client.models.logout_flow import LogoutFlow
from ory_client.models.session import Session

KRATOS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "kratos"


def kratos_dir() -> Path:
    for candidate in (KRATOS_DIR, Path(__file__).resolve().parents[2] / "shared" / "kratos"):
        if (candidate / "openapi.json").exists():
            return candidate
    raise FileNotFoundError("../shared/kratos/openapi.json not found beside the checkout")


@cache
def spec() -> dict[str, Any]:
    raw = json.loads((kratos_dir() / "openapi.json").read_text())
    patched = copy.deepcopy(raw)
    schemas = patched["components"]["schemas"]
    # CONTRACT §3.1: admin endpoints send `"identity": null` and `"devices": null`.
    schemas["session"]["properties"]["identity"] = {
        "anyOf": [{"$ref": "#/components/schemas/identity"}, {"enum": [None]}]
    }
    schemas["session"]["properties"]["devices"]["nullable"] = True
    # CONTRACT §2/§4.1: the AAL error carries `details.redirect_browser_to`, though the spec
    # declares `details` with no properties and additionalProperties false.
    schemas["genericError"]["properties"]["details"]["additionalProperties"] = True
    return patched


@cache
def _operations() -> list[tuple[str, re.Pattern[str], dict[str, Any]]]:
    ops = []
    for template, item in spec()["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$")
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                ops.append((method.upper(), pattern, op))
    # Literal paths before templated ones (`/sessions/whoami` before `/sessions/{id}`).
    ops.sort(key=lambda o: o[1].pattern.count("[^/]+"))
    return ops


def find_operation(method: str, path: str) -> dict[str, Any]:
    if path == "/sessions/whoami":  # every method reaches whoami (CONTRACT §4.1)
        method = "GET"
    for op_method, pattern, op in _operations():
        if op_method == method and pattern.match(path):
            return op
    raise AssertionError(f"no operation in the spec for {method} {path}")


def _schema_for(op: dict[str, Any], status: int) -> dict[str, Any] | None:
    responses = op["responses"]
    resp = responses.get(str(status)) or responses.get("default")
    assert resp is not None, f"{op['operationId']}: status {status} not in the spec"
    if "$ref" in resp:
        resp = spec()["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    content = resp.get("content", {}).get("application/json")
    return content["schema"] if content else None


def _validate(instance: Any, schema: dict[str, Any]) -> None:
    root = {"components": spec()["components"], **schema}
    OAS30Validator(root, format_checker=FormatChecker()).validate(instance)


def _sdk_parse(schema: dict[str, Any], body: Any) -> None:
    ref = schema.get("$ref") or schema.get("items", {}).get("$ref", "")
    name = ref.rsplit("/", 1)[-1]
    items = body if schema.get("type") == "array" else [body]
    for item in items:
        if name == "session":
            Session.from_dict(item)
        elif name == "errorGeneric":
            GenericError.from_dict(item["error"])
        elif name == "deleteMySessionsCount":
            DeleteMySessionsCount.from_dict(item)
        elif name == "logoutFlow":
            LogoutFlow.from_dict(item)
        else:
            raise AssertionError(f"no ory-client model mapped for schema {name!r}")


def check_response(response: httpx.Response) -> None:
    """Raise AssertionError unless the response matches the spec and parses with ory-client."""
    request = response.request
    body = response.read()
    if response.status_code == 307:  # Kratos' cross-port redirects are not in the spec
        assert body == b""
        assert response.headers["location"]
        return
    op = find_operation(request.method, request.url.path)
    if request.method == "HEAD":
        return
    schema = _schema_for(op, response.status_code)
    if response.status_code in (204, 303, 307):
        assert body == b"", f"{response.status_code} with a body: {body[:80]!r}"
        return
    assert schema is not None, f"{op['operationId']} {response.status_code}: no JSON schema"
    data = json.loads(body)
    _validate(data, schema)
    _sdk_parse(schema, data)
