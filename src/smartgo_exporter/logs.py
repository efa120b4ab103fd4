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
    """Set up structlog for the process; call once, at the edge (CLI, scheduler, Lambda).

    Without `stream`, lines go to whatever `sys.stderr` is when each line is written, so a
    caller that swaps stderr (a test runner, a progress display) never leaves the logger
    writing to a closed file.
    """
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True)
        if (stream or sys.stderr).isatty()
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
        logger_factory=lambda *_: structlog.PrintLogger(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
