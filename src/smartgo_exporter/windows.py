"""Export windows: which half-open span of time a run exports.

A window is a business day in the configured time zone, [local midnight, next local midnight),
carried as UTC instants so sources and the table never see local time. On the day a clock
changes, the window is 23 or 25 hours long, as the store's day really was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from smartgo_exporter.errors import DayNotOver


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """Sales with start <= sold_at < end belong to this window's business day."""

    day: date
    start: datetime
    end: datetime


def business_day(day: date, timezone: str) -> Window:
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)
    return Window(day, start.astimezone(UTC), end.astimezone(UTC))


def yesterday(timezone: str, now: datetime | None = None) -> date:
    """The last complete business day at `now` in the business time zone."""
    now = now or datetime.now(UTC)
    return now.astimezone(ZoneInfo(timezone)).date() - timedelta(days=1)


def ensure_over(days: Iterable[date], timezone: str, now: datetime | None = None) -> None:
    """Raise DayNotOver for the first of `days` whose business day has not ended at `now`."""
    now = now or datetime.now(UTC)
    for day in days:
        window = business_day(day, timezone)
        if window.end > now:
            raise DayNotOver(day, window.end.astimezone(ZoneInfo(timezone)), timezone)


def days(first: date, last: date) -> Iterator[date]:
    """Every day from first to last, both included."""
    if last < first:
        raise ValueError(f"the range ends ({last}) before it starts ({first})")
    for offset in range((last - first).days + 1):
        yield first + timedelta(days=offset)


def catch_up(last_exported: date | None, target: date, limit: int) -> list[date]:
    """The days to export so that nothing after `last_exported` up to `target` is missed.

    At most `limit` days, the most recent ones: a store that was down for a month gets its last
    `limit` days now, and the rest on request (`run --from/--to`), rather than one huge run.
    """
    if last_exported is None or last_exported >= target:
        return [target]
    missed = list(days(last_exported + timedelta(days=1), target))
    return missed[-max(limit, 1) :]
