"""The commands that read the run history back: `history` and `stats`.

Through the same edge as `run`: a progress store that cannot be opened or read is a one-line
error and exit code 2, not a traceback, nor a "No runs recorded" that is not true.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from smartgo_exporter import run_history
from smartgo_exporter.cli.edge import DEFAULT_CONFIG, ConfigOption, console, guarded, load_settings
from smartgo_exporter.cli.output import print_day, print_runs, print_summary


def history(
    config: ConfigOption = DEFAULT_CONFIG,
    day: Annotated[
        datetime | None,
        typer.Option("--date", formats=["%Y-%m-%d"], help="Runs of this day only."),
    ] = None,
    limit: Annotated[int, typer.Option(help="How many recent runs.")] = 20,
) -> None:
    """Show recent runs, or one day's runs with their errors.

    Example: `smartgo-exporter history --date 2026-11-26`
    """
    settings = load_settings(config)
    records = guarded(
        lambda: (
            run_history.runs_on(settings, day.date())
            if day
            else run_history.recent_runs(settings, limit)
        )
    )
    if not records:
        console.print(f"No runs recorded{f' for {day.date()}' if day else ''}.")
    elif day is None:
        print_runs(records)
    else:
        print_day(records)


def stats(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Summarise the stored runs: success rate, rows, failures by reason.

    Example: `smartgo-exporter stats`
    """
    settings = load_settings(config)
    summary = guarded(lambda: run_history.summary(settings))
    if not summary.runs:
        console.print("No runs recorded.")
        return
    print_summary(summary)
