"""The commands that export: `run` (a day, a range, or catch-up), `backfill` and `schedule`."""

from __future__ import annotations

import threading
from datetime import date, datetime
from typing import Annotated

import typer

from smartgo_exporter.backfill import Runner, backfill
from smartgo_exporter.cli.edge import (
    DEFAULT_CONFIG,
    ConfigOption,
    LogLevel,
    guarded,
    load_settings,
)
from smartgo_exporter.cli.output import print_runs, progress_display
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunRecord, RunStatus
from smartgo_exporter.windows import days

RetryFailed = Annotated[
    bool,
    typer.Option(
        "--retry-failed",
        help="Fetch every failed photo again, also those whose retry is not due yet (after a "
        "fix on the photo host, or a change of photos.allow_networks).",
    ),
]


def run(
    config: ConfigOption = DEFAULT_CONFIG,
    day: Annotated[
        datetime | None, typer.Option("--date", formats=["%Y-%m-%d"], help="Export this day.")
    ] = None,
    first: Annotated[
        datetime | None, typer.Option("--from", formats=["%Y-%m-%d"], help="First day of a range.")
    ] = None,
    last: Annotated[
        datetime | None, typer.Option("--to", formats=["%Y-%m-%d"], help="Last day of a range.")
    ] = None,
    retry_failed: RetryFailed = False,
    log_level: LogLevel = "WARNING",
) -> None:
    """Export yesterday (business time zone), catching up missed days; or a day; or a range.

    Without a day, the last `lookback_days` days exported before are read again too, for late
    refunds and corrections (trigger "lookback"). SIGTERM or Ctrl-C stops it cleanly: the
    batches already read are committed, the day is recorded PARTIAL (a later run completes
    it), later days are left for the next run, and the exit status is that of the recorded
    runs. A second SIGTERM or Ctrl-C exits at once.

    A photo that failed for good (404, not an image, ...) is fetched again only once its
    back-off has passed (photos.retry_backoff_days); --retry-failed fetches it now.

    Example: `smartgo-exporter run --config smartgo-exporter.toml --from 2026-11-01 --to 2026-11-07`
    """
    from smartgo_exporter.scheduler import stop_on_signals

    configure_logging(log_level)
    settings = load_settings(config)
    selected = _days(day, first, last)
    with progress_display() as progress, stop_on_signals(threading.Event()) as stop:
        records = guarded(
            lambda: export(
                settings,
                selected,
                on_batch=progress.on_batch,
                on_day=progress.on_day,
                should_stop=stop.is_set,
                retry_failed=retry_failed,
            )
        )
    _print_outcome(records)


def backfill_command(
    first: Annotated[
        datetime, typer.Option("--from", formats=["%Y-%m-%d"], help="First day to export.")
    ],
    last: Annotated[
        datetime, typer.Option("--to", formats=["%Y-%m-%d"], help="Last day to export.")
    ],
    config: ConfigOption = DEFAULT_CONFIG,
    runner: Annotated[
        Runner,
        typer.Option(
            help="local: one day after another on this machine; ray: all the days at once on "
            "a Ray cluster. Needs: pip install 'smartgo-exporter\\[ray]'."
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="The Ray cluster (host:port, auto, ray://...); default: RAY_ADDRESS, a Ray "
            "started on this machine, or else a local Ray started for this backfill."
        ),
    ] = None,
    retry_failed: RetryFailed = False,
    log_level: LogLevel = "WARNING",
) -> None:
    """Export every day of a range, each as its own run, on this machine or on a Ray cluster.

    Every day gets its run record and the table is the same whichever runner exports it: rows
    already there are not rewritten, and stored embeddings of unchanged photos are reused.

    With `embedder.batch = true` (Titan), the photos are embedded by one Bedrock batch job at
    about half the price: the first call starts it and says "waiting for batch job <arn>";
    run the same command again (hourly, say) until the job is done and the days are exported.

    Example: `smartgo-exporter backfill --from 2026-01-01 --to 2026-03-31 --runner ray`
    """
    configure_logging(log_level)
    settings = load_settings(config)
    with progress_display() as progress:
        records = guarded(
            lambda: backfill(
                settings,
                first.date(),
                last.date(),
                runner=runner,
                ray_address=ray_address,
                on_batch=progress.on_batch,
                on_day=progress.on_day,
                retry_failed=retry_failed,
            )
        )
    _print_outcome(records)


def schedule(
    config: ConfigOption = DEFAULT_CONFIG,
    cron: Annotated[
        str | None,
        typer.Option(help="Five-field cron in UTC; default: [schedule] cron, or 0 3 * * *."),
    ] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Stay in the foreground: export now (catching up missed days), then at every cron time.

    SIGTERM or Ctrl-C stops it: an export in progress commits its current batch and is recorded
    PARTIAL (the next run completes the day); between exports it exits at once.

    Example: `smartgo-exporter schedule --config smartgo-exporter.toml --cron "30 2 * * *"`
    """
    from smartgo_exporter.scheduler import run_schedule, stop_on_signals

    configure_logging(log_level)
    overrides = {"schedule": {"cron": cron}} if cron is not None else {}
    settings = guarded(lambda: load_config(config, **overrides))
    with stop_on_signals(threading.Event()) as stop:
        run_schedule(settings, stop_event=stop)


def _print_outcome(records: list[RunRecord]) -> None:
    """The runs' table, and exit status 1 when any of them failed."""
    print_runs(records)
    if any(record.status is RunStatus.FAILED for record in records):
        raise typer.Exit(1)


def _days(day: datetime | None, first: datetime | None, last: datetime | None) -> list[date] | None:
    if day and (first or last):
        raise typer.BadParameter("use --date or --from/--to, not both")
    if day:
        return [day.date()]
    if first or last:
        if not (first and last):
            raise typer.BadParameter("--from and --to go together")
        if last < first:
            raise typer.BadParameter(f"--to {last:%Y-%m-%d} is before --from {first:%Y-%m-%d}")
        return list(days(first.date(), last.date()))
    return None
