"""Running the gate as a server: granian (the default) or uvicorn, one or more workers.

The server was chosen by measurement (bench/README.md): on one core, granian carries ~20% more
requests per second through the gate than uvicorn with uvloop + httptools, and at c=256 its p99
stays near nginx's while uvicorn's grows to seconds. uvicorn stays available (`listen.server`),
e.g. where granian's wheels are not available.

With `listen.workers` > 1 each worker is a process with its own session cache. Without
`shared.redis_url` a session is validated once per worker, and a revocation through the gate
clears it in the worker that relayed it only; with it, workers and replicas share revocations
(and sessions) through Redis (see README, "Several cores").

The cyclic garbage collector is tuned in each worker once the gate is built (`tune_collector`):
the objects of start-up (~80,000: modules, settings, compiled patterns) are frozen out of its
scans, and a collection waits for 20,000 new container objects instead of 700. Under load the
requests in flight survived young collections and filled the oldest generation, so a full
collection over every start-up object ran ~2.5 times a second, each up to 100 ms: 12% of the
worker's CPU and most of its p99 (bench/README.md, "The garbage collector").

Metrics (`metrics.enabled`): this process opens the one metrics listener of the serve, on its
own port, before any worker starts (granian's supervisor and uvicorn's stay alive beside their
workers; with uvicorn and one worker it is the worker too). The workers write their figures
into a fresh directory (prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR set here
before anything imports prometheus_client) and the listener sums them at each scrape.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from sessiongate.config import CONFIG_ENV, Settings, load_settings
from sessiongate.logs import configure_logging

if TYPE_CHECKING:
    from sessiongate.gate import Gate
    from sessiongate.metrics import MetricsListener

log = logging.getLogger("sessiongate")

#: Bound on reading a request's headers: a slow-loris client is dropped after this.
HEADER_READ_TIMEOUT_MS = 10_000


#: Young-generation threshold (CPython's default is 700): request-sized garbage is freed by
#: reference counting, so collections are for cycles, and fewer of them promote fewer requests
#: in flight into the older generations.
COLLECT_AFTER = 20_000


def tune_collector() -> None:
    """Freeze what exists now (start-up's objects: never garbage) out of the collector's scans
    and collect less often. Called in each serving process once its gate is built; not in
    middleware mode, where the process and its collector are the app's."""
    gc.collect()  # start-up's own cycles, before what is left is frozen for good
    gc.freeze()
    gc.set_threshold(COLLECT_AFTER, 20, 20)


def gate_from_environment() -> Gate:
    """The factory each granian worker calls: settings from SESSIONGATE_CONFIG and the env."""
    from sessiongate.gate import Gate  # here, not at import: granian's supervisor never needs it

    settings = load_settings()
    configure_logging(settings.log.level, settings.log.format)  # this worker's writer
    gate = Gate(settings)
    tune_collector()
    return gate


class StartupError(Exception):
    """The gate cannot start (the message names the setting to change)."""


def serve(settings: Settings, config_path: str | None) -> None:
    """Serve until SIGINT/SIGTERM. `settings` were validated by the caller. Raises
    StartupError (before any worker starts) when the metrics port cannot be bound."""
    configure_logging(settings.log.level, settings.log.format)
    if settings.listen.workers > 1 and not settings.shared.enabled:
        log.warning(
            "%d workers, each with its own session cache: a revocation through the gate "
            "reaches the other workers only when their entry lapses (cache.ttl = %gs); set "
            "shared.redis_url to share revocations through Redis",
            settings.listen.workers,
            settings.cache.ttl,
        )
    metrics = _start_metrics(settings) if settings.metrics.enabled else None
    try:
        if settings.listen.server == "uvicorn":
            _serve_uvicorn(settings, config_path)
        else:
            _serve_granian(settings, config_path)
    finally:
        if metrics is not None:
            listener, directory = metrics
            listener.close()
            shutil.rmtree(directory, ignore_errors=True)


def _start_metrics(settings: Settings) -> tuple[MetricsListener, str]:
    """The serve's metrics listener, summing its workers' files in a fresh directory."""
    directory = tempfile.mkdtemp(prefix="sessiongate-metrics-")
    # before prometheus_client is imported anywhere in this process (it picks its storage at
    # import) and before the workers start (they inherit it)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from sessiongate.metrics import MetricsListener, MetricsListenerError

    config = settings.metrics
    try:
        listener = MetricsListener(config.host, config.port, directory)
    except MetricsListenerError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise StartupError(str(exc)) from exc
    if config.port == 0:
        log.warning("metrics.port is 0: the metrics are at %s", listener.url)
    else:
        log.info("metrics at %s", listener.url)
    return listener, directory


def _serve_granian(settings: Settings, config_path: str | None) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    if config_path is not None:
        # workers are separate processes: they read the same file (and the same env overrides)
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    Granian(
        "sessiongate.serve:gate_from_environment",
        factory=True,
        interface=Interfaces.ASGI,
        address=settings.listen.host,
        port=settings.listen.port,
        workers=settings.listen.workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS),
        websockets=True,
        backlog=4096,
        log_level=LogLevels(settings.log.level),
        log_access=False,
        # granian's own lines through the gate's writer (logs.py), in the gate's format
        log_dictconfig={
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"_granian": {"handlers": [], "propagate": True}},
        },
    ).serve()


def _serve_uvicorn(settings: Settings, config_path: str | None) -> None:
    import uvicorn

    from sessiongate.gate import Gate

    common = {
        "host": settings.listen.host,
        "port": settings.listen.port,
        "log_level": settings.log.level,
        "log_config": None,  # uvicorn's lines through the gate's writer (logs.py)
        "access_log": False,
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "timeout_keep_alive": 30,
        "h11_max_incomplete_event_size": 64 * 1024,
        "backlog": 4096,
    }
    if settings.listen.workers == 1:
        gate = Gate(settings)
        tune_collector()
        uvicorn.run(gate, **common)  # type: ignore[arg-type]
        return
    if config_path is not None:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    uvicorn.run(
        "sessiongate.serve:gate_from_environment",
        factory=True,
        workers=settings.listen.workers,
        **common,  # type: ignore[arg-type]
    )
