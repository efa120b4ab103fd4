"""Backfills: export a range of past days, on this machine or on a Ray cluster.

A backfill (a new table, a new model, a fixed source) is many days that do not depend on each
other. The local runner exports them in turn through `pipeline.export` (each read while the
one before is embedded and committed); the Ray runner (`ray_runner`) exports them all at once
on a cluster. Either way each day is one run with its run record and its lease, and the table
comes out the same. Ray is an optional extra, imported only when it is chosen.

    records = backfill(settings, date(2026, 1, 1), date(2026, 3, 31), runner="ray")
"""

from __future__ import annotations

from datetime import date
from typing import Literal, get_args

import structlog

from smartgo_exporter.config import Settings
from smartgo_exporter.embedders import load_embedder
from smartgo_exporter.errors import ConfigError, ExporterError
from smartgo_exporter.index import sync_after_export
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunRecord
from smartgo_exporter.runs import DayCallback, ProgressCallback
from smartgo_exporter.sinks.iceberg import load_table
from smartgo_exporter.windows import days, ensure_over

log = structlog.get_logger(__name__)

Runner = Literal["local", "ray"]
TRIGGER = "backfill"
"""The run records' `trigger`, so `history` tells a backfill from the nightly runs."""


def backfill(
    settings: Settings,
    start: date,
    end: date,
    *,
    runner: Runner = "local",
    ray_address: str | None = None,
    on_batch: ProgressCallback | None = None,
    on_day: DayCallback | None = None,
    retry_failed: bool = False,
) -> list[RunRecord]:
    """Export every day from `start` to `end`, both included; one run record per day.

    `runner="ray"` runs the days on a Ray already initialised in this process, or else on the
    cluster at `ray_address` (`host:port`, `auto`, `ray://...`), or else where `ray.init()`
    goes (see `ray_runner.export_on_ray`). Without Ray installed it raises RunnerUnavailable, whose
    message says what to install. A `ray_address` without the Ray runner is a ConfigError,
    as is an unknown runner or a range that ends before it starts; a range reaching a day that
    has not ended yet raises DayNotOver. `on_batch`, `on_day` and `retry_failed` (fetch every
    failed photo again, due or not) are as in `pipeline.export`.

    With `embedder.batch` (Titan), the local runner embeds the range through one Bedrock batch
    job, a step per call (`batch_backfill`): the first call starts the job and returns the
    range's RUNNING record, "waiting for batch job <arn>"; the call after the job is done
    exports the days with its vectors.
    """
    if runner not in get_args(Runner):
        raise ConfigError("runner", f"unknown runner {runner!r}; use local or ray")
    if end < start:
        raise ConfigError("to", f"the range ends ({end}) before it starts ({start})")
    selected = list(days(start, end))
    ensure_over(selected, settings.export.timezone)
    if runner == "ray":
        if settings.embeds_in_batch:
            raise ConfigError(
                "embedder.batch", "a batch job backfills with the local runner; use --runner local"
            )
        from smartgo_exporter.ray_runner import export_on_ray

        records = export_on_ray(
            settings,
            selected,
            address=ray_address,
            trigger=TRIGGER,
            on_batch=on_batch,
            on_day=on_day,
            retry_failed=retry_failed,
        )
        _sync_indexes(settings)
        return records
    if ray_address is not None:
        raise ConfigError("ray_address", "only the ray runner runs on a cluster")
    if settings.embeds_in_batch:
        from smartgo_exporter.batch_backfill import backfill_in_batch  # boto3: the `aws` extra

        return backfill_in_batch(
            settings,
            start,
            end,
            trigger=TRIGGER,
            on_batch=on_batch,
            on_day=on_day,
            retry_failed=retry_failed,
        )
    return export(
        settings,
        selected,
        trigger=TRIGGER,
        on_batch=on_batch,
        on_day=on_day,
        retry_failed=retry_failed,
    )


def _sync_indexes(settings: Settings) -> None:
    """The Ray driver's part of what the local runner's export() does at its end."""
    try:
        embedder = load_embedder(settings.embedder)
        table = load_table(settings.table)
    except ExporterError as error:  # no table or model to index with: nothing to keep up
        log.warning("index_update_failed", error=str(error))
        return
    sync_after_export(settings.index, settings.table, table, embedder.model_id, embedder.dim)
