"""Which days a scheduled export runs: yesterday, the days missed, then recent days again."""

from __future__ import annotations

from datetime import UTC, date, datetime

from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.day_plan import DayPlan, plan_days

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
YESTERDAY = date(2026, 11, 26)


def settings(**export: object) -> Settings:
    return load_config(
        None, source={"type": "sql", "url": "sqlite:///pos.db", "table": "sales"}, export=export
    )


def nov(*days: int) -> list[date]:
    return [date(2026, 11, day) for day in days]


def test_a_nightly_plan_reads_the_days_before_yesterday_again_after_it() -> None:
    plan = plan_days(settings(lookback_days=3), date(2026, 11, 25), NOW, exported=lambda _: True)
    assert plan == DayPlan(days=nov(26), lookback=nov(23, 24, 25))
    assert plan.all_days == nov(26, 23, 24, 25)


def test_days_caught_up_are_first_exports_and_not_read_twice() -> None:
    plan = plan_days(settings(lookback_days=3), date(2026, 11, 23), NOW, exported=lambda _: True)
    assert plan == DayPlan(days=nov(24, 25, 26), lookback=nov(23))


def test_a_day_never_exported_is_not_read_again() -> None:
    exported = set(nov(24, 25))
    plan = plan_days(
        settings(lookback_days=3), date(2026, 11, 25), NOW, exported=exported.__contains__
    )
    assert plan == DayPlan(days=nov(26), lookback=nov(24, 25))


def test_without_knowing_what_was_exported_nothing_is_read_again() -> None:
    assert plan_days(settings(lookback_days=3), date(2026, 11, 25), NOW) == DayPlan(nov(26))


def test_a_lookback_of_zero_days_reads_nothing_again() -> None:
    plan = plan_days(settings(lookback_days=0), date(2026, 11, 25), NOW, exported=lambda _: True)
    assert plan == DayPlan(nov(26))


def test_a_second_run_on_the_same_night_reads_yesterday_and_the_lookback_again() -> None:
    plan = plan_days(settings(lookback_days=2), YESTERDAY, NOW, exported=lambda _: True)
    assert plan == DayPlan(days=nov(26), lookback=nov(24, 25))
