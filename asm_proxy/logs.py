"""Logs: one JSON object a line for machines, text for a person, the same fields in both.

Each JSON line has these keys, always, in this order (the schema is stable: keys may be
added at the end, never renamed or dropped; unknown values are null):

    time        UTC, RFC 3339 with milliseconds      "2026-11-30T13:55:18.018Z"
    level       debug, info, warning, error, critical
    logger      "asm_proxy.supervisor", "asm_proxy.plugin.<name>", ...
    message     the message
    worker      the worker's index; null in the supervisor (and in `asm-proxy demo`)
    plugin      the plugin the line is about (whose hook was running, or named by the line)
    request_id  the exchange's `x-request-id` (Envoy gives every request one)
    trace_id    the exchange's trace id: its span's, else its traceparent / B3 header's
    event       the kind of a line meant for machines ("decision"), else null

and, when there is one, `data` (the event's fields: a decision's result, reason, ...) and
`error` ({"type", "message", "stack"} of an exception logged with it). The text format
prints the same: `time level logger[worker N]: message (plugin=... request_id=...)`.

The exchange a line belongs to comes from a context variable set when an exchange starts
(`bind_exchange`: stream.py for ext_proc, authz.judge for a check, whatever the transport;
each call runs in its own task); its headers are read only when a line is written, so an
exchange that logs nothing pays one `ContextVar.set`.

Secrets: nothing in asm-proxy logs a credential, and the formatters also blank what looks
like one in a message (a JWT, a Bearer or Basic credential) in case a plugin does.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from asm_proxy.direction import Direction
    from asm_proxy.exchange import Exchange, Http

Format = Literal["auto", "json", "text"]

#: The exchange being served in this task (an ext_proc stream, an ext_authz Check).
current_exchange: ContextVar[Exchange | None] = ContextVar("asm_proxy_exchange", default=None)

_worker: int | None = None

_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # a JWT
    r"|(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{12,}"  # an Authorization credential
)


def bind_exchange(exchange: Exchange) -> None:
    """The current task now serves `exchange` (its log lines carry its ids)."""
    current_exchange.set(exchange)


def scrub(text: str) -> str:
    """`text` with anything shaped like a credential blanked."""
    if "eyJ" not in text and "earer" not in text and "asic" not in text:
        return text
    return _SECRETS.sub("[REDACTED]", text)


def _header(d: Direction, name: str) -> str | None:
    headers = d.headers
    if headers is not None:
        return headers.get(name)
    raw = d.raw_headers
    if raw is None:
        return None
    for h in raw.headers:
        if h.key == name:
            return (h.raw_value or h.value.encode()).decode("utf-8", "replace")
    return None


def _trace_id_of_headers(d: Direction) -> str | None:
    parent = _header(d, "traceparent")
    if parent is not None:
        parts = parent.split("-")
        if len(parts) >= 3 and len(parts[1]) == 32:
            return parts[1]
    b3 = _header(d, "x-b3-traceid")
    if b3:
        return b3
    single = _header(d, "b3")
    if single and "-" in single:
        return single.split("-", 1)[0]
    return None


Ids = tuple[str | None, str | None, str | None]
_NO_IDS: Ids = (None, None, None)


def _exchange_ids() -> Ids:
    """(running plugin, request id, trace id) of the exchange this task serves."""
    x = current_exchange.get()
    if x is None:
        return _NO_IDS
    plugin = x.current.name or None if x.current is not None else None
    traced = x.trace  # a sampled exchange's span (asm_proxy.tracing)
    trace_id = traced.trace_id() if traced is not None else _trace_id_of_headers(x.request)
    return plugin, _header(x.request, "x-request-id"), trace_id


_make_record = logging.getLogRecordFactory()


def _record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record takes its exchange's ids when it is made, in the task that logs it
    (a handler may format it later, elsewhere: pytest's caplog, a queue)."""
    record = _make_record(*args, **kwargs)
    record.asm_ids = _exchange_ids()
    return record


logging.setLogRecordFactory(_record)


def context(record: logging.LogRecord) -> Ids:
    """(plugin, request_id, trace_id) of the line: the plugin it names (`extra`), or whose
    logger wrote it, or whose hook was running."""
    running, request_id, trace_id = getattr(record, "asm_ids", _NO_IDS)
    plugin = getattr(record, "plugin", None)
    if plugin is None and record.name.startswith("asm_proxy.plugin."):
        plugin = record.name[len("asm_proxy.plugin.") :]
    return plugin or running, request_id, trace_id


def _time(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{int((created - seconds) * 1000):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    """One JSON object a line (the schema above)."""

    def format(self, record: logging.LogRecord) -> str:
        plugin, request_id, trace_id = context(record)
        line: dict[str, Any] = {
            "time": _time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
            "worker": _worker,
            "plugin": plugin,
            "request_id": request_id,
            "trace_id": trace_id,
            "event": getattr(record, "event", None),
        }
        data = getattr(record, "data", None)
        if data is not None:
            line["data"] = data
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line["error"] = {
                "type": type(exc).__name__,
                "message": scrub(str(exc)),
                "stack": scrub(self.formatException(record.exc_info)),
            }
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """For a terminal: the same fields on one line (an exception's traceback after it)."""

    def __init__(self) -> None:
        where = f"[worker {_worker}]" if _worker is not None else ""
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = scrub(super().format(record))
        plugin, request_id, trace_id = context(record)
        extra = [
            f"{k}={v}"
            for k, v in (("plugin", plugin), ("request_id", request_id), ("trace_id", trace_id))
            if v and not (k == "plugin" and record.name.endswith(f".{v}"))
        ]
        data = getattr(record, "data", None)
        if data:
            extra.append(orjson.dumps(data, default=str).decode())
        if not extra:
            return text
        first, sep, rest = text.partition("\n")
        return f"{first} ({' '.join(extra)}){sep}{rest}"


def format_from_env() -> Format:
    """ASM_PROXY_LOG_FORMAT: json, text or auto (the default)."""
    value = os.environ.get("ASM_PROXY_LOG_FORMAT", "auto").lower()
    return value if value in ("json", "text") else "auto"  # type: ignore[return-value]


# -- decision logs -----------------------------------------------------------------------

DecisionLog = Literal["all", "deny", "none"]
#: Which decisions are logged (the server's `decisionLog` setting).
decision_log: DecisionLog = "deny"
_decisions = logging.getLogger("asm_proxy.decision")


def log_decision(
    plugin: str,
    http: Http,
    *,
    allowed: bool,
    reason: str,
    status: int,
    dry_run: bool = False,
    details: dict[str, str | int | bool | None] | None = None,
) -> None:
    """One access decision as a log line with event "decision" (OPA's decision logs): who
    decided, the verdict, why, and on what request (method, authority, path without its
    query). `details` say who the caller was (consumer, credential kind), never the
    credential itself."""
    if decision_log == "none" or (allowed and decision_log == "deny"):
        return
    verdict = "allow" if allowed else ("dry_run_deny" if dry_run else "deny")
    request = http.request
    data: dict[str, Any] = {
        "decision": verdict,
        "status": status,
        "reason": reason,
        "method": request.method,
        "authority": request.authority,
        "path": request.path_only,
    }
    if details:
        data.update({k: v for k, v in details.items() if v is not None})
    _decisions.info(
        "%s: %s %s %s (%s)",
        plugin,
        verdict,
        request.method,
        request.path_only,
        reason,
        extra={"event": "decision", "data": data, "plugin": plugin},
    )


def resolve(fmt: Format) -> Literal["json", "text"]:
    """`auto` is ASM_PROXY_LOG_FORMAT if set, else text on a terminal and JSON otherwise."""
    if fmt == "auto":
        fmt = format_from_env()
    if fmt == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return fmt


def setup(fmt: Format = "auto", level: str = "info", *, worker: int | None = None) -> None:
    """Log to stderr in `fmt` at `level` (replacing what was set up before)."""
    global _worker
    _worker = worker
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve(fmt) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
