"""Logging: text or one JSON object a line, every line carrying the job and the run id."""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER = "pipeline"


class _Context(logging.Filter):
    def __init__(self):
        super().__init__()
        self.job = "-"
        self.run_id = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = self.job
        record.run_id = self.run_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "job": getattr(record, "job", None),
            "run_id": getattr(record, "run_id", None),
            "message": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}) or {})
        return json.dumps(data, default=str)


_context = _Context()


def setup(fmt: str = "text", log_file: str | None = None, level: int = logging.INFO) -> logging.Logger:
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level)
    logger.propagate = False
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(job)s %(run_id)s: %(message)s",
                                      datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    _file_handlers.clear()
    _terminal_handlers[:] = handlers[:1]
    _format[0] = fmt
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        _file_handlers.append(handlers[-1])
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_context)
        logger.addHandler(handler)
    return logger


_file_handlers: list[logging.Handler] = []
_terminal_handlers: list[logging.Handler] = []
_format = ["text"]


def is_json() -> bool:
    return _format[0] == "json"


def emit(level: int, message: str, fields: dict | None = None, *, terminal: bool = True,
         files: bool = True) -> None:
    """One record to the terminal, to --log-file, or both; ``fields`` become JSON keys."""
    logger = logging.getLogger(LOGGER)
    record = logger.makeRecord(LOGGER, level, __file__, 0, message, (), None, extra={"fields": fields or {}})
    _context.filter(record)
    for handler in (_terminal_handlers if terminal else []) + (_file_handlers if files else []):
        handler.handle(record)


def to_file_only(level: int, message: str) -> None:
    """A record for --log-file alone (stderr already got the same words from the CLI)."""
    emit(level, message, terminal=False)


def set_context(job: str | None = None, run_id: str | None = None) -> None:
    if job is not None:
        _context.job = job
    if run_id is not None:
        _context.run_id = run_id
