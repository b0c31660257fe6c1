"""The gate test stack: Kratos fake, echo app and the gate under a real server on 127.0.0.1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from apps import EchoApp
from sessiongate.config import Settings
from sessiongate.gate import Gate
from sessiongate.testing import FakeKratosServer, GranianThread, KratosFake, UvicornThread


@dataclass
class Stack:
    kratos: FakeKratosServer
    app: EchoApp
    gate: Gate
    gate_server: UvicornThread | GranianThread
    upstream_server: UvicornThread

    @property
    def fake(self) -> KratosFake:
        return self.kratos.fake

    @property
    def url(self) -> str:
        return self.gate_server.url

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)


def settings_for(kratos_url: str, upstream_url: str, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "ory": {"public_url": kratos_url, "timeout": 2},
        "upstream": {"url": upstream_url, "timeout": 3, "connect_timeout": 1},
        "access": {
            "login_url": "http://127.0.0.1:4433/self-service/login/browser",
            "public_paths": ["/health/**", "/public/**"],
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Settings.model_validate(data)
