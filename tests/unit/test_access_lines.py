"""The access line written straight to the log stream: the same line logging
would write, and logging itself whenever it would do anything more."""

from __future__ import annotations

import io
import logging
import os
import re
import time

import pytest

from service import runtime
from service.logs import TEXT_FORMAT, InfoLines, JsonFormatter
from service.middleware import _new_request_id


@pytest.fixture
def root_stream():
    """The root logger as the service configures it (text lines), writing to a buffer.
    A test calls it to get (handler, stream): pytest adds its own capturing handlers
    to the root after the fixtures ran, so they are taken off here, in the test."""
    saved = logging.root.handlers[:], logging.root.level
    runtime.configure_logging("info")
    (handler,) = logging.root.handlers
    stream = io.StringIO()
    handler.setStream(stream)

    def ours_alone():
        logging.root.handlers[:] = [handler]
        return handler, stream

    yield ours_alone
    logging.root.handlers[:] = saved[0]
    logging.root.setLevel(saved[1])


def test_the_service_configures_the_text_format_the_quick_line_copies(root_stream):
    handler, _stream = root_stream()
    assert handler.formatter._fmt == TEXT_FORMAT


@pytest.mark.parametrize("created", [1_790_000_000.0, 1_790_000_000.0999, 1_790_000_000.9995, 1_790_000_001.5])
def test_the_line_is_the_one_logging_formats(created):
    logger = logging.getLogger("context_store.access")
    lines = InfoLines(logger)
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "%s", ("GET /x 200 1.0ms request_id=r",), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    expected = logging.Formatter(TEXT_FORMAT).format(record) + "\n"
    assert lines.line(created, "GET /x 200 1.0ms request_id=r") == expected
    assert lines.line(created, "again") == expected.replace("GET /x 200 1.0ms request_id=r", "again")


def test_lines_go_straight_to_the_stream_when_that_is_all_logging_would_do(root_stream):
    handler, stream = root_stream()
    logger = logging.getLogger("context_store.access")
    lines = InfoLines(logger)
    assert lines._plain_handler() is handler
    before = time.time()
    lines.info("GET /x 200 1.0ms request_id=abc", {"request_id": "abc"})
    written = stream.getvalue()
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} {os.getpid()} INFO context_store.access: "
        r"GET /x 200 1.0ms request_id=abc\n",
        written,
    ), written
    assert abs(time.mktime(time.strptime(written[:19], "%Y-%m-%d %H:%M:%S")) - before) < 2
    lines._forked()  # as in a forked worker: the pid is read again
    assert lines._pid == os.getpid()


def test_a_failing_stream_loses_the_line_quietly(root_stream):
    handler, stream = root_stream()
    stream.close()
    lines = InfoLines(logging.getLogger("context_store.access"))
    assert lines._plain_handler() is handler
    lines.info("GET /x 200 1.0ms request_id=abc", {})
    handler.setStream(io.StringIO())


def _through_logging(setup) -> list[logging.LogRecord]:
    """The records logging handled for one line, with the root set up by `setup`."""
    logger = logging.getLogger("context_store.access")
    records: list[logging.LogRecord] = []

    class Keep(logging.Filter):
        def filter(self, record):
            records.append(record)
            return True

    undo = setup(logger, Keep())
    try:
        InfoLines(logger).info("GET /x 200 1.0ms request_id=abc", {"request_id": "abc", "status": 200})
    finally:
        undo()
    return records


def _root_filter(logger, keep):
    logging.root.addFilter(keep)  # not called by the root for a child's record: add one on the handler too
    logging.root.handlers[0].addFilter(keep)
    return lambda: (logging.root.removeFilter(keep), logging.root.handlers[0].removeFilter(keep))


def _own_handler(logger, keep):
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(keep)
    logger.addHandler(handler)
    return lambda: logger.removeHandler(handler)


def _json(logger, keep):
    formatter = logging.root.handlers[0].formatter
    logging.root.handlers[0].setFormatter(JsonFormatter())
    logging.root.handlers[0].addFilter(keep)

    def undo():
        logging.root.handlers[0].setFormatter(formatter)
        logging.root.handlers[0].removeFilter(keep)

    return undo


def _second_handler(logger, keep):
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(keep)
    logging.root.addHandler(handler)
    return lambda: logging.root.removeHandler(handler)


def _not_propagating(logger, keep):
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(keep)
    logger.addHandler(handler)
    logger.propagate = False

    def undo():
        logger.removeHandler(handler)
        logger.propagate = True

    return undo


def _other_datefmt(logger, keep):
    formatter = logging.root.handlers[0].formatter
    logging.root.handlers[0].setFormatter(logging.Formatter(TEXT_FORMAT, datefmt="%H:%M"))
    logging.root.handlers[0].addFilter(keep)

    def undo():
        logging.root.handlers[0].setFormatter(formatter)
        logging.root.handlers[0].removeFilter(keep)

    return undo


@pytest.mark.parametrize(
    "setup",
    [_root_filter, _own_handler, _json, _second_handler, _not_propagating, _other_datefmt],
    ids=["filter", "own-handler", "json", "two-handlers", "not-propagating", "datefmt"],
)
def test_anything_more_than_a_plain_text_line_goes_through_logging_with_the_fields(root_stream, setup):
    handler, _stream = root_stream()
    assert InfoLines(logging.getLogger("context_store.access"))._plain_handler() is handler  # before the setup
    records = _through_logging(setup)
    assert records, "the line did not go through logging"
    record = records[0]
    assert record.getMessage() == "GET /x 200 1.0ms request_id=abc"
    assert (record.request_id, record.status) == ("abc", 200)


def test_request_ids_are_32_hex_digits_and_differ():
    ids = {_new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids)
