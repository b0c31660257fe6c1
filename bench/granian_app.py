"""The gate as a module-level ASGI app, for servers that import an app (granian)."""

import os

from sessiongate.config import load_settings
from sessiongate.gate import Gate

app = Gate(load_settings(os.environ["BENCH_GRANIAN_CONFIG"]))
