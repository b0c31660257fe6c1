"""The access log: one line per request (proxy mode, `log.access`), from the request's record.

`AccessLog` is an Observer (observe.py): when a request's answer is sent it takes what the
record says (request id, method, path without its query, status, decision, reason, the gate's
overhead and the total time, the identity only with `log.identity`) and hands a tuple to the
process' `LogWriter` (logs.py), which formats and writes it on its own thread: the request's
task pays for one tuple and one queue put. What a line never holds: a token, a cookie, a
header value other than the request id, a key, or the query string (the record has none of
them). Without a writer (a `Gate` embedded without `sessiongate serve`), lines go to the
`sessiongate.access` logger at INFO instead, as text.
"""

from __future__ import annotations

import logging
import time

from starlette.types import Scope

from sessiongate.logs import ACCESS_LOGGER, Clock, LogWriter, format_access
from sessiongate.observe import RequestRecord, bounded


class AccessLog:
    __slots__ = ("identity", "put")

    def __init__(self, writer: LogWriter | None, *, identity: bool = False) -> None:
        self.identity = identity
        self.put = writer.access if writer is not None else _LoggerSink()

    def finish(self, scope: Scope, record: RequestRecord) -> None:
        decision, reason = bounded(record)  # fixed words: safe in a line unescaped
        self.put(
            (
                time.time(),
                record.request_id,
                record.method,
                record.path,
                record.status,
                decision,
                reason,
                record.overhead,
                record.duration,
                record.identity_id if self.identity else "",
                record.upstream_error,
                record.route,
                record.kind,
            )
        )


class _Line:
    """A record's argument, formatted only if a handler writes it."""

    __slots__ = ("fields",)

    def __init__(self, fields: tuple) -> None:  # type: ignore[type-arg]
        self.fields = fields

    def __str__(self) -> str:
        return format_access(self.fields, False, Clock()).split(" ", 3)[3]  # type: ignore[arg-type]

    __repr__ = __str__


class _LoggerSink:
    def __init__(self) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)

    def __call__(self, fields: tuple) -> None:  # type: ignore[type-arg]
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info("%s", _Line(fields))
