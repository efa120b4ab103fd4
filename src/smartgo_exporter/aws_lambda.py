"""The AWS Lambda entry point: the nightly export on its EventBridge schedule, and manual runs.

Handler: `smartgo_exporter.aws_lambda.handler`. It calls the same `pipeline.export` as the CLI
and the local scheduler; what is Lambda's own lives here: reading the event, the time budget,
the request id on every log line, and the CloudWatch metrics.

Events (anything else is refused, with the field at fault named):

    {"source": "aws.events", "detail-type": "Scheduled Event", "time": "2026-11-27T03:00:00Z", ...}
        The EventBridge schedule: yesterday, as of the event's `time`, plus the days missed since
        the last successful run; trigger "schedule". Then the `lookback_days` days before
        yesterday that were exported already, read again for late changes; trigger "lookback".
        The schedule's time, not the moment the code starts, decides the days, so a delayed or
        retried delivery exports the same days.
    {"date": "2026-11-26"}                      that day; trigger "manual"
    {"from": "2026-11-01", "to": "2026-11-07"}  those days, both included (at most 366)
    {}                                          yesterday plus missed days, as of now

With `embedder.batch` (Titan), a range goes through the batch backfill (`batch_backfill`), one
step per invocation: the first starts the range's Bedrock batch job, the next ones answer with
the range's record, "waiting for batch job <arn>", while it runs, and the one after it is done
exports the days with its vectors, within the time budget (the days left go to the next
invocation of the same range). Invoke the same range again, by hand or on a schedule of your
own, until its record is SUCCEEDED. A date, or the schedule's days, are embedded on demand.

Response (JSON):

    {"ok": true, "trigger": "schedule", "request_id": "...",
     "runs": [{"date": "2026-11-26", "trigger": "schedule", "status": "SUCCEEDED",
               "run_id": "20261126-...",
               "counts": {"sales": 41, "rejected": 0, "written": 41, ...},
               "error_count": 0, "message": "", "cost_usd": "0.00012345"}],
     "not_started": []}
    {"ok": false, "request_id": "...", "error": {"field": "date", "message": "..."}}

`not_started` lists the days asked for that the time budget left no room for; PARTIAL runs and
not-started days are completed by the next run's catch-up. A FAILED run raises `ExportFailed`
after its summary is logged and the metrics are flushed: see there why.

Settings come from `load_config(SGX_CONFIG)` (a TOML file bundled with the code, and/or SGX_*
variables) once per container, with secrets resolved then; a warm invocation reuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

import structlog
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from smartgo_exporter import day_plan
from smartgo_exporter.allocator import unmap_large_blocks
from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.costs import CostBasis, LambdaArchitecture, estimate, lambda_shares
from smartgo_exporter.day_plan import DayPlan
from smartgo_exporter.errors import ConfigError, DayNotOver, ExporterError
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.pipeline import StopCheck, export
from smartgo_exporter.progress import FAILURES as PROGRESS_FAILURES
from smartgo_exporter.progress import NonFatalProgressStore, load_progress_store
from smartgo_exporter.run_records import LOOKBACK_TRIGGER, RunRecord, RunStatus
from smartgo_exporter.windows import days as days_between
from smartgo_exporter.windows import ensure_over

log = structlog.get_logger(__name__)

SERVICE = "smartgo-exporter"
"""The `service` dimension of every metric, beside `stage`."""
MAX_RANGE_DAYS = 366
SCHEDULE_TRIGGER = "schedule"
MANUAL_TRIGGER = "manual"

COUNT_METRICS = {
    "SalesFound": "sales",
    "SalesRejected": "rejected",
    "RowsWritten": "written",
    "EmbeddingsCreated": "embedded",
    "EmbeddingsReused": "reused",
    "EmbeddingsFailed": "failed",
    "SalesVoided": "voided",
    "RowsRemoved": "removed",
}
"""Metric name -> the RunCounts field it totals over the invocation's runs."""
RUN_METRICS = {"RunsFailed": RunStatus.FAILED, "RunsPartial": RunStatus.PARTIAL}
DAYS_EXPORTED_METRIC = "DaysExported"
"""Days whose export landed (SUCCEEDED, or PARTIAL: rows rejected or out of time, which
RunsPartial reports), re-reads of days already exported (lookback) left out. The deployment
alarms when none is seen for 26 hours: a schedule missed, or every run failing."""
PROGRESS_FAILURES_METRIC = "ProgressStoreFailures"
"""Progress-store calls that failed and were swallowed (`progress.FailureTally`): the export
went on, but without its lease or its run history."""
DURATION_METRIC = "ExportDuration"

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MANUAL_FIELDS = ("date", "from", "to")


class LambdaContext(Protocol):
    """The part of Lambda's context object the handler uses."""

    @property
    def aws_request_id(self) -> str: ...

    def get_remaining_time_in_millis(self) -> int: ...


class ExportContext(LambdaContext, Protocol):
    """The context as the export handler uses it: also the memory its GB-seconds are of."""

    @property
    def memory_limit_in_mb(self) -> int | str:
        """Text in Lambda's own Python runtime, a number in some others."""
        ...


class BadEvent(ExporterError):
    """The event is not one the handler accepts; `field` names the key at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ExportFailed(ExporterError):
    """At least one day's run FAILED; `summary` is the response the invocation would have given.

    Raised rather than returned because only an error makes Lambda count the invocation as
    failed: the AWS/Lambda `Errors` metric (what the deployment's alarm watches), the retries
    of an asynchronous (EventBridge) invocation and any on-failure destination all follow from
    it, where a returned `"ok": false` would pass for success. PARTIAL runs do not raise: their
    rows landed, and the next run completes them.
    """

    def __init__(self, summary: dict[str, Any], failed: Sequence[RunRecord]) -> None:
        days = "; ".join(
            f"{record.business_date} (run {record.run_id}): {record.message}" for record in failed
        )
        super().__init__(f"export failed for {days}")
        self.summary = summary


@dataclasses.dataclass(frozen=True, slots=True)
class ExportRequest:
    """What an event asks for."""

    trigger: str
    days: list[date] | None
    """None: yesterday as of `as_of`, plus the days missed since the last successful run."""
    as_of: datetime | None = None
    """The schedule's firing time; None means now."""
    is_range: bool = False
    """The days came as `from` and `to`: a backfill, which `embedder.batch` embeds in batch."""


@dataclasses.dataclass(frozen=True, slots=True)
class Runtime:
    """What a container loads once and its warm invocations reuse."""

    settings: Settings
    metrics: Metrics


def load_settings() -> Settings:
    """The settings a function of this deployment runs with, and its logging configured.

    `load_config(SGX_CONFIG)` (a TOML file bundled with the code, and/or SGX_* variables),
    secrets resolved; a ConfigError is logged, naming the key, and raised. Shared by every
    handler of the image (this one and `aws_lookup`), so they read one configuration alike.
    """
    configure_logging("INFO")
    try:
        settings = load_config(os.environ.get("SGX_CONFIG") or None)
    except ConfigError as error:
        log.error("config_invalid", key=error.key, error=error.reason)
        raise
    configure_logging(settings.aws_lambda.log_level)
    return settings


@functools.cache
def warm_runtime() -> Runtime:
    """Settings, logging and metrics for this container, loaded on its first invocation.

    Not cached when loading fails (functools.cache keeps only results), so a container whose
    first attempt met a passing SSM error tries again on its next invocation.
    """
    unmap_large_blocks()
    settings = load_settings()
    metrics = Metrics(namespace=settings.aws_lambda.metrics_namespace, service=SERVICE)
    metrics.set_default_dimensions(stage=settings.aws.stage)
    return Runtime(settings, metrics)


def handler(event: object, context: ExportContext) -> dict[str, Any]:
    """Export what the event asks for; see the module docstring for events and responses."""
    with structlog.contextvars.bound_contextvars(request_id=context.aws_request_id):
        runtime = warm_runtime()
        try:
            request = parse_event(event)
            _ensure_over(request, runtime.settings)
        except BadEvent as error:
            log.error("event_refused", field=error.field, reason=error.reason)
            return {
                "ok": False,
                "request_id": context.aws_request_id,
                "error": {"field": error.field, "message": error.reason},
            }
        return _export(runtime, request, context)


def parse_event(event: object) -> ExportRequest:
    """The request an event makes; BadEvent naming the field when it makes none."""
    if not isinstance(event, Mapping):
        raise BadEvent("event", f"must be a JSON object, not {type(event).__name__}")
    if "source" in event or "detail-type" in event:
        return _scheduled(event)
    unknown = [key for key in event if key not in _MANUAL_FIELDS]
    if unknown:
        raise BadEvent(
            str(unknown[0]),
            'unknown field; send {"date": "YYYY-MM-DD"}, {"from": ..., "to": ...} or {}',
        )
    if "date" in event:
        if "from" in event or "to" in event:
            raise BadEvent("date", "give `date`, or `from` and `to`, not both")
        return ExportRequest(MANUAL_TRIGGER, [_day(event, "date")])
    if "from" in event or "to" in event:
        for field in ("from", "to"):
            if field not in event:
                raise BadEvent(field, "missing: `from` and `to` go together")
        first, last = _day(event, "from"), _day(event, "to")
        if last < first:
            raise BadEvent("to", f"{last} is before `from` ({first})")
        if (last - first).days + 1 > MAX_RANGE_DAYS:
            raise BadEvent("to", f"a range is at most {MAX_RANGE_DAYS} days; split it")
        return ExportRequest(MANUAL_TRIGGER, list(days_between(first, last)), is_range=True)
    return ExportRequest(MANUAL_TRIGGER, None)


def days_due(settings: Settings, as_of: datetime | None = None) -> DayPlan:
    """Yesterday as of `as_of`, the days missed since the last successful run, and the recent
    days read again (`lookback_days`).

    The same days `export(settings)` would choose, worked out here so that the schedule's time
    can anchor them and the response can tell which of them the time budget left out.
    """
    return day_plan.days_due(settings, as_of)


def publish_metrics(
    metrics: Metrics, records: Sequence[RunRecord], seconds: float, *, progress_failures: int
) -> None:
    """One EMF document for the invocation: totals over its runs, the progress-store failures
    it met, and how long they took."""
    for name, field in COUNT_METRICS.items():
        total = sum(getattr(record.counts, field) for record in records)
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=total)
    for name, status in RUN_METRICS.items():
        count = sum(record.status is status for record in records)
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    exported = sum(
        record.status is not RunStatus.FAILED
        and record.batch_job is None  # a range's batch record, no day
        and record.trigger != LOOKBACK_TRIGGER
        for record in records
    )
    metrics.add_metric(name=DAYS_EXPORTED_METRIC, unit=MetricUnit.Count, value=exported)
    metrics.add_metric(
        name=PROGRESS_FAILURES_METRIC, unit=MetricUnit.Count, value=progress_failures
    )
    metrics.add_metric(name=DURATION_METRIC, unit=MetricUnit.Seconds, value=round(seconds, 3))
    metrics.flush_metrics()


def record_lambda_cost(
    settings: Settings, records: Sequence[RunRecord], memory_mb: int, seconds: float
) -> None:
    """Add the invocation's GB-seconds to its runs' costs, shared by how long each ran, and
    save the records again: the runs finished before the invocation's duration was known."""
    if not records:
        return
    gb_seconds = Decimal(memory_mb) / 1024 * Decimal(f"{seconds:.3f}")
    architecture: LambdaArchitecture = (
        "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    )
    basis = CostBasis.of(settings)
    progress = NonFatalProgressStore.connect(
        lambda: load_progress_store(settings.progress, retention_days=settings.retention_days)
    )
    try:
        for record, share in zip(records, lambda_shares(records, gb_seconds), strict=True):
            record.cost = estimate(
                record, basis, lambda_gb_seconds=share, architecture=architecture, extra_saves=1
            )
            progress.save(record)
    finally:
        progress.close()


def _export(runtime: Runtime, request: ExportRequest, context: ExportContext) -> dict[str, Any]:
    settings = runtime.settings
    margin_ms = settings.aws_lambda.time_margin_seconds * 1000

    def out_of_time() -> bool:
        return context.get_remaining_time_in_millis() < margin_ms

    progress_failures_before = PROGRESS_FAILURES.count
    plan = DayPlan(request.days) if request.days is not None else days_due(settings, request.as_of)
    days = plan.all_days
    log.info(
        "invocation_started",
        trigger=request.trigger,
        days=[day.isoformat() for day in plan.days],
        lookback=[day.isoformat() for day in plan.lookback],
        time_left_seconds=context.get_remaining_time_in_millis() / 1000,
    )
    started = time.monotonic()
    try:
        if request.is_range and settings.embeds_in_batch:
            records = _batch_step(settings, plan.days, request.trigger, out_of_time)
        else:
            records = export(
                settings,
                plan.days,
                lookback=plan.lookback,
                trigger=request.trigger,
                should_stop=out_of_time,
            )
    except Exception:
        log.exception("invocation_crashed")
        raise
    seconds = time.monotonic() - started
    record_lambda_cost(settings, records, int(context.memory_limit_in_mb), seconds)
    runtime.metrics.add_metadata(key="request_id", value=context.aws_request_id)
    publish_metrics(
        runtime.metrics,
        records,
        seconds,
        progress_failures=PROGRESS_FAILURES.count - progress_failures_before,
    )
    failed = [record for record in records if record.status is RunStatus.FAILED]
    summary = {
        "ok": not failed,
        "trigger": request.trigger,
        "request_id": context.aws_request_id,
        "runs": [_run_summary(record) for record in records],
        "not_started": [day.isoformat() for day in _not_started(days, records)],
    }
    log.info("invocation_finished", ok=summary["ok"], not_started=summary["not_started"])
    if failed:
        raise ExportFailed(summary, failed)
    return summary


def _batch_step(
    settings: Settings, days: Sequence[date], trigger: str, out_of_time: StopCheck
) -> list[RunRecord]:
    from smartgo_exporter.batch_backfill import backfill_in_batch  # boto3: the `aws` extra

    return backfill_in_batch(settings, days[0], days[-1], trigger=trigger, should_stop=out_of_time)


def _not_started(days: Sequence[date], records: Sequence[RunRecord]) -> list[date]:
    """The days the time budget left out: those after the last day exported. A batch record
    (a range's, first) is no day; while its job runs, no day is due, so none is left out."""
    if records and records[0].batch_job is not None:
        batch, *exported = records
        if batch.status is not RunStatus.RUNNING or not exported:
            return []
        return [day for day in days if day > exported[-1].business_date]
    return list(days[len(records) :])


def _ensure_over(request: ExportRequest, settings: Settings) -> None:
    """BadEvent for a manual request reaching a day that has not ended yet."""
    try:
        ensure_over(request.days or (), settings.export.timezone)
    except DayNotOver as error:
        raise BadEvent("date" if len(request.days or ()) == 1 else "to", str(error)) from None


def _scheduled(event: Mapping[Any, Any]) -> ExportRequest:
    if event.get("source") != "aws.events":
        raise BadEvent("source", f"only aws.events is handled, not {event.get('source')!r}")
    if event.get("detail-type") != "Scheduled Event":
        raise BadEvent(
            "detail-type", f"expected 'Scheduled Event', not {event.get('detail-type')!r}"
        )
    fired = event.get("time")
    if fired is None:
        return ExportRequest(SCHEDULE_TRIGGER, None)
    try:
        as_of = datetime.fromisoformat(fired) if isinstance(fired, str) else None
    except ValueError:
        as_of = None
    if as_of is None or as_of.tzinfo is None:
        raise BadEvent("time", f"not an ISO 8601 time with a zone: {fired!r}")
    return ExportRequest(SCHEDULE_TRIGGER, None, as_of)


def _day(event: Mapping[Any, Any], field: str) -> date:
    value = event[field]
    if not isinstance(value, str) or not _DAY.fullmatch(value):
        raise BadEvent(field, f"expected a date as YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadEvent(field, f"not a calendar date: {value!r}") from None


def _run_summary(record: RunRecord) -> dict[str, Any]:
    return {
        "date": record.business_date.isoformat(),
        "trigger": record.trigger,
        "status": str(record.status),
        "run_id": record.run_id,
        "counts": dataclasses.asdict(record.counts),
        "error_count": record.error_count,
        "message": record.message,
        "cost_usd": str(record.cost.total) if record.cost else None,
    }
