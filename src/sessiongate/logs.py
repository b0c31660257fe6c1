"""Logging set-up: every line the gate writes, in one format, written off the event loop.

The gate never logs credentials: only digests and session/identity ids (and the access line's
fields, see access_log.py). `configure_logging(level, format)` (what `sessiongate serve` and each
worker call) routes every log record of the process, the servers' included, to one `LogWriter`:
a queue and a thread that formats and writes to stderr. The event loop only builds a record (a
`logging.LogRecord` for ordinary lines, through a `QueueHandler`; a plain tuple for an access
line, see `LogWriter.access`) and puts it in the queue; the thread takes everything queued every
`INTERVAL`, formats it and writes it in one call. Access lines are written whatever `log.level`
says (they have their own switch, `log.access`).

Formats (`log.format`): `text` is `TIME LEVEL LOGGER MESSAGE`; `json` is one object per line,
`{"time", "level", "logger", "message"}` (plus `exception`, and `request_id` for a line logged
while a request ran). Access lines carry their own fields instead of a message
(`format_access`). Times are RFC 3339 in UTC with milliseconds.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from typing import IO, Any

from sessiongate.tracing import CURRENT

#: How often the writer thread wakes to write what was queued (a bound on a line's delay).
INTERVAL = 0.05
#: Lines waiting beyond this are dropped (stderr blocked): memory stays bounded; counted.
MAX_QUEUED = 100_000
ACCESS_LOGGER = "sessiongate.access"
_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_STOP = object()

#: An access line's fields, in this order (access_log.AccessLog builds it):
#: (time, request_id, method, path, status, decision, reason, overhead s, duration s,
#:  identity_id, upstream_error, route, kind)
AccessFields = tuple[float, str, str, str, int, str, str, float, float, str, str, str, str]
MAX_PATH = 2048  # longer paths are cut (and marked): a line stays a line


class Clock:
    """RFC 3339 UTC text of a time, the seconds part computed once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second, self.text = -1, ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.text}.{int((when - second) * 1000):03d}Z"


def _path(path: str) -> str:
    return path if len(path) <= MAX_PATH else path[:MAX_PATH] + "..."


def format_access(fields: AccessFields, as_json: bool, clock: Clock) -> str:
    """One access line. Strings a client controls (path, request id) are JSON-escaped in both
    formats: a newline or a quote in them cannot forge a line or a field."""
    (when, rid, method, path, status, decision, reason, overhead, duration, identity) = fields[:10]
    upstream_error, route, kind = fields[10:]
    if as_json:
        line = (
            f'{{"time":"{clock(when)}","level":"info","logger":"{ACCESS_LOGGER}",'
            f'"request_id":{_json_string(rid)},"method":{_json_string(method)},'
            f'"path":{_json_string(_path(path))},"status":{status},'
            f'"decision":"{decision}","reason":"{reason}",'
            f'"overhead_ms":{overhead * 1000:.3f},"duration_ms":{duration * 1000:.3f}'
        )
        return line + _optional(kind, upstream_error, route, identity, as_json=True) + "}"
    line = (
        f"{clock(when)} INFO {ACCESS_LOGGER} request_id={_json_string(rid)} "
        f"method={_json_string(method)} path={_json_string(_path(path))} status={status} "
        f"decision={decision} reason={reason or '-'} overhead_ms={overhead * 1000:.3f} "
        f"duration_ms={duration * 1000:.3f}"
    )
    return line + _optional(kind, upstream_error, route, identity, as_json=False)


def _optional(kind: str, upstream_error: str, route: str, identity: str, *, as_json: bool) -> str:
    """An access line's fields that are there only when they say something. `kind` and
    `upstream_error` are fixed words; `route` and the identity are escaped."""
    fields = (
        ("kind", "" if kind == "http" else kind, False),
        ("upstream_error", upstream_error, False),
        ("route", route, True),
        ("identity_id", identity, True),
    )
    out = ""
    for name, value, escape in fields:
        if value:
            shown = _json_string(value) if escape else (f'"{value}"' if as_json else value)
            out += f',"{name}":{shown}' if as_json else f" {name}={shown}"
    return out


class LineFormatter(logging.Formatter):
    """Ordinary log records as text or JSON lines (the access lines' base fields)."""

    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json
        self.clock = Clock()

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        exception = record.exc_text or (
            self.formatException(record.exc_info) if record.exc_info else ""
        )
        when = self.clock(record.created)
        rid = getattr(record, "request_id", "")
        if not self.as_json:
            line = f"{when} {record.levelname} {record.name} {message}"
            if rid:
                line += f" request_id={rid}"
            return f"{line}\n{exception}" if exception else line
        out: dict[str, Any] = {
            "time": when,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if rid:
            out["request_id"] = rid
        if exception:
            out["exception"] = exception
        return json.dumps(out, separators=(",", ":"), default=str)


class ToWriter(logging.handlers.QueueHandler):
    """Puts a finished record in the writer's queue: the message merged with its arguments
    (they may change later), the exception as text, the running request's id."""

    def __init__(self, writer: LogWriter) -> None:
        super().__init__(writer.queue)  # type: ignore[arg-type]
        self.writer = writer

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)  # other handlers (pytest's) may hold the original
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info, record.stack_info = None, None
        ctx = CURRENT.get()
        if ctx is not None and ctx.request_id and not hasattr(record, "request_id"):
            record.request_id = ctx.request_id
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        self.writer.put(record)


class LogWriter:
    """A queue and the thread that formats and writes what is put in it (see the module)."""

    def __init__(self, stream: IO[str] | None = None, *, as_json: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.as_json = as_json
        self.formatter = LineFormatter(as_json)
        self.clock = Clock()
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.dropped = 0
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="sessiongate-log", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        q = self.queue
        if q.qsize() >= MAX_QUEUED:
            self.dropped += 1  # stderr does not keep up: drop rather than grow without bound
            return
        q.put(item)

    #: For access lines: a tuple in, nothing else on the event loop.
    access = put

    def _run(self) -> None:
        q = self.queue
        while True:
            items = [q.get()]
            time.sleep(INTERVAL)  # let a batch gather: one wake-up and one write for many lines
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(q.get_nowait())
            if not self._write(items):
                return

    def _write(self, items: list[Any]) -> bool:
        lines, flushed, go_on = [], [], True
        for item in items:
            try:
                if type(item) is tuple:
                    lines.append(format_access(item, self.as_json, self.clock))
                elif isinstance(item, logging.LogRecord):
                    lines.append(self.formatter.format(item))
                elif item is _STOP:
                    go_on = False
                elif isinstance(item, threading.Event):
                    flushed.append(item)
            except Exception:  # a line that cannot be formatted must not stop the others
                lines.append(f"sessiongate: unformattable log item {type(item).__name__}")
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            lines.append(
                self.formatter.format(
                    logging.makeLogRecord(
                        {
                            "name": "sessiongate.logs",
                            "levelno": logging.WARNING,
                            "levelname": "WARNING",
                            "msg": f"{dropped} log lines dropped: stderr did not keep up",
                        }
                    )
                )
            )
        if lines:
            with contextlib.suppress(OSError, ValueError):  # closed or broken stderr
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
        for event in flushed:
            event.set()
        return go_on

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until what was queued before this call is written (shutdown)."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self.queue.put(done)
        done.wait(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread.is_alive() and self.pid == os.getpid():
            self.queue.put(_STOP)
            self._thread.join(timeout)


_writer: LogWriter | None = None
_handler: logging.Handler | None = None


def current_writer() -> LogWriter | None:
    """This process' writer (None unless `configure_logging` ran in this process)."""
    writer = _writer
    return writer if writer is not None and writer.pid == os.getpid() else None


def configure_logging(
    level: str = "info", format: str = "text", stream: IO[str] | None = None
) -> LogWriter:
    """Every log record at `level` and above, and the access lines, to one writer on stderr.
    Called again (a worker process, new settings) it replaces the previous writer."""
    global _writer, _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    old = _writer
    writer = LogWriter(stream, as_json=format == "json")
    if old is not None:
        old.stop()  # written out first (a thread of a parent process is not ours to join)
    handler = ToWriter(writer)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "_granian"):
        # the servers' own lines go to the same writer, in the same format
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
    _writer, _handler = writer, handler
    return writer


def flush_logs() -> None:
    writer = current_writer()
    if writer is not None:
        writer.flush()


@atexit.register
def _at_exit() -> None:
    writer = current_writer()
    if writer is not None:
        writer.stop()
