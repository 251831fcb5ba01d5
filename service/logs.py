"""Log lines: what a client sent, escaped; and one JSON object per line for log
shippers (LOG_FORMAT=json)."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone

import orjson
from gunicorn import glogging

# Fields a log call may pass in `extra=` that the JSON lines carry as their own keys.
FIELDS = ("request_id", "method", "path", "status", "duration_ms")
# The text lines' format (runtime.configure_logging).
TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


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


class InfoLines:
    """A logger's INFO lines (the access line, one per request) written the way
    logging would write them, at a fraction of the cost: logging spends about
    14 us on a line (a LogRecord, the Formatter, asctime, two lock rounds), this
    about 3 us, most of it the write. It writes straight to the stream only when
    that is all logging would do with the line: the logger and the root have no
    filters, the logger no handler of its own, and the root one plain
    StreamHandler or FileHandler at INFO or below with the text format. Anything
    else (JSON lines, pytest's caplog, an operator's logging config) goes
    through logging, with `extra` for the JSON lines' fields."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._second = -1
        self._stamp = ""
        self._pid = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._pid = os.getpid()

    def _plain_handler(self) -> logging.StreamHandler | None:
        logger, root = self.logger, logging.root
        if logger.handlers or logger.filters or root.filters or not logger.propagate:
            return None
        handlers = root.handlers
        if len(handlers) != 1:
            return None
        handler = handlers[0]
        formatter = handler.formatter
        if (
            type(handler) not in (logging.StreamHandler, logging.FileHandler)
            or handler.filters
            or handler.level > logging.INFO
            or type(formatter) is not logging.Formatter
            or formatter._fmt != TEXT_FORMAT
            or formatter.datefmt is not None
            or formatter.converter is not time.localtime
            or handler.stream is None
        ):
            return None
        return handler

    def line(self, created: float, message: str) -> str:
        """The line logging.Formatter(TEXT_FORMAT) makes of an INFO record of
        this logger created at `created` (time.time()) with this message."""
        second = int(created)
        if second != self._second:
            # One strftime a second; asctime's ",mmm" is per line.
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        millis = int((created - second) * 1000)
        return f"{self._stamp},{millis:03d} {self._pid} INFO {self.logger.name}: {message}\n"

    def info(self, message: str, extra: dict[str, object]) -> None:
        """Log `message` at INFO (the caller checked the level is enabled)."""
        handler = self._plain_handler()
        if handler is None:
            self.logger.info("%s", message, extra=extra)
            return
        text = self.line(time.time(), message)
        with handler.lock:
            try:
                handler.stream.write(text)
                handler.stream.flush()
            except (OSError, ValueError):
                # A closed or failing stream: logging would print a traceback
                # per line to stderr; one lost access line is all this costs.
                pass


class GunicornLogger(glogging.Logger):
    """gunicorn's logger, whose access lines are on only when `accesslog` is set.

    The app writes one access line per request, with its request id
    (middleware.py), and the service sets no `accesslog`. gunicorn's Logger also
    turns its own access line on whenever a logging config is given, which
    LOG_FORMAT=json is: every request was logged twice, the second line without
    its request id, and gunicorn built that line's atoms on every request."""

    def _compute_access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)
