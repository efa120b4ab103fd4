"""Logging: structlog, JSON lines when nobody is watching, readable lines on a terminal.

Every line carries the run id (bound with structlog's contextvars by the pipeline), so one run's
lines can be picked out of a day's logs, including the lines of the photo fetcher and the sink.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Set up structlog for the process; call once, at the edge (CLI, scheduler, Lambda)."""
    stream = stream or sys.stderr
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True)
        if stream.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
