"""The run records read back for a person: what ran on a day, what ran lately, how runs went.

The export talks to its progress store through NonFatalProgressStore, as a store that is down
must not stop an export. Asking what ran is the other way round: "no runs recorded" from a
store that could not be read would be a wrong answer. So here a store that cannot be opened or
read raises ProgressStoreUnavailable, and each call opens the store and closes it again.

    records = runs_on(settings, date(2026, 11, 26))
    records = recent_runs(settings, limit=20)
    totals = summary(settings)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import date
from typing import TypeVar

from smartgo_exporter.config import DynamoProgressConfig, Settings
from smartgo_exporter.errors import ExporterError, ProgressStoreUnavailable
from smartgo_exporter.progress import ProgressStore, RunSummary, load_progress_store
from smartgo_exporter.run_records import RunRecord

T = TypeVar("T")


def runs_on(settings: Settings, day: date) -> list[RunRecord]:
    """The runs of business day `day`, by start time."""
    return _ask(settings, lambda store: store.runs_on(day))


def recent_runs(settings: Settings, limit: int) -> list[RunRecord]:
    """The `limit` runs started last, newest first."""
    return _ask(settings, lambda store: store.recent(limit))


def summary(settings: Settings) -> RunSummary:
    """Totals over the stored runs."""
    return _ask(settings, lambda store: store.summary())


def _ask(settings: Settings, question: Callable[[ProgressStore], T]) -> T:
    config = settings.progress
    where = (
        f"DynamoDB table {config.table_name}"
        if isinstance(config, DynamoProgressConfig)
        else f"SQLite file {config.path}"
    )
    try:
        store = load_progress_store(config, retention_days=settings.retention_days)
    except ExporterError:
        raise  # says what is wrong already, e.g. which extra to install
    # Backends raise whatever their client raises (sqlite3, botocore, OSError).
    except Exception as error:
        raise ProgressStoreUnavailable(where, f"cannot be opened: {error}") from error
    try:
        with contextlib.closing(store):
            return question(store)
    except Exception as error:
        raise ProgressStoreUnavailable(where, f"cannot be read: {error}") from error
