"""A run's window is one business day in the store's time zone, as UTC instants."""

from datetime import UTC, date, datetime

import pytest

from smartgo_exporter.errors import DayNotOver
from smartgo_exporter.windows import business_day, catch_up, ensure_over, yesterday


def test_a_business_day_runs_from_local_midnight_to_local_midnight() -> None:
    window = business_day(date(2026, 7, 1), "Europe/London")
    assert window.start == datetime(2026, 6, 30, 23, 0, tzinfo=UTC)
    assert window.end == datetime(2026, 7, 1, 23, 0, tzinfo=UTC)


def test_the_day_the_clocks_go_back_is_25_hours_long() -> None:
    window = business_day(date(2026, 10, 25), "Europe/London")
    assert (window.end - window.start).total_seconds() == 25 * 3600


def test_yesterday_is_taken_in_the_business_time_zone() -> None:
    just_after_midnight_in_tokyo = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)
    assert yesterday("Asia/Tokyo", just_after_midnight_in_tokyo) == date(2026, 11, 26)
    assert yesterday("UTC", just_after_midnight_in_tokyo) == date(2026, 11, 25)


def test_catch_up_covers_every_missed_day_up_to_the_limit() -> None:
    assert catch_up(date(2026, 11, 20), date(2026, 11, 23), 7) == [
        date(2026, 11, 21),
        date(2026, 11, 22),
        date(2026, 11, 23),
    ]
    assert catch_up(date(2026, 10, 1), date(2026, 11, 23), 2) == [
        date(2026, 11, 22),
        date(2026, 11, 23),
    ]


def test_without_a_previous_success_only_the_target_day_runs() -> None:
    assert catch_up(None, date(2026, 11, 23), 7) == [date(2026, 11, 23)]


def test_a_day_is_over_once_its_local_midnight_has_passed() -> None:
    half_past_midnight_utc = datetime(2026, 11, 27, 0, 30, tzinfo=UTC)
    ensure_over([date(2026, 11, 26)], "UTC", half_past_midnight_utc)
    with pytest.raises(DayNotOver, match="2026-11-26 is not over yet") as raised:
        ensure_over([date(2026, 11, 26)], "America/New_York", half_past_midnight_utc)
    assert raised.value.day == date(2026, 11, 26)
    assert raised.value.ends_at == datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
