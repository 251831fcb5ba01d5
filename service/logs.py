"""Log lines: what a client sent, escaped; and one JSON object per line for log
shippers (LOG_FORMAT=json)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import orjson

# Fields a log call may pass in `extra=` that the JSON lines carry as their own keys.
FIELDS = ("request_id", "method", "path", "status", "duration_ms")


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """Text from a request made safe for a log line: control and other
    non-printable characters (CR, LF, ESC, bidi overrides, line separators) as
    \\xNN, \\uNNNN or \\UNNNNNNNN, and the backslash doubled, so a client can neither
    forge a line nor send escape sequences to an operator's terminal."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, the request's
    fields when the call gave them, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()
