"""What the commands print: the run tables, the summaries, and how an export shows progress.

Formatting only; every value shown comes back from the one library call a command makes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC
from decimal import Decimal
from typing import TYPE_CHECKING

from rich import box
from rich.filesize import pick_unit_and_suffix
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from smartgo_exporter.cli.edge import console, errors
from smartgo_exporter.costs import PRICES_READ
from smartgo_exporter.run_records import LOOKBACK_TRIGGER, RunRecord, RunStatus
from smartgo_exporter.runs import BatchDone, DayCallback, DayDone, ProgressCallback

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.table import Table as IcebergTable

    from smartgo_exporter.progress import RunSummary
    from smartgo_exporter.sinks.compaction import CompactionReport

COUNT_COLUMNS = (
    "sales",
    "written",
    "embedded",
    "reused",
    "failed",
    "deferred",
    "rejected",
    "removed",
    "normalised",
)


def print_runs(records: Sequence[RunRecord]) -> None:
    """The per-run summary table the CLI prints after an export and for `history`."""
    console.print(_runs_table(records, "day", lambda record: record.business_date.isoformat()))
    if (cost := _cost_line(records)) is not None:
        console.print(cost, markup=False, highlight=False)
    for record in records:
        if record.message:
            errors.print(f"[red]{record.business_date}: {record.message}[/]")


def print_day(records: Sequence[RunRecord]) -> None:
    """One day's runs, by start time, then each run's id, message and recorded errors."""

    def started(record: RunRecord) -> str:
        return record.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")

    title = f"Export runs of {records[0].business_date}" if records else "Export runs"
    console.print(_runs_table(records, "started (UTC)", started, title=title))
    for record in records:
        cost = f", estimated AWS cost {_usd(record.cost.total)}" if record.cost else ""
        console.print(
            f"\nrun {record.run_id}: {record.status}, started {record.started_at.isoformat()}"
            + cost,
            markup=False,
        )
        if record.message:
            console.print(f"  {record.message}", style="red", markup=False)
        for error in record.errors:
            console.print(
                f"  sale {error.sale_id or '-'} [{error.stage}:{error.reason}] {error.detail}",
                markup=False,
            )
        if record.error_count > len(record.errors):
            console.print(f"  ... and {record.error_count - len(record.errors)} more")


def _runs_table(
    records: Sequence[RunRecord],
    heading: str,
    first_cell: Callable[[RunRecord], str],
    *,
    title: str = "Export runs",
) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column(heading, no_wrap=True)
    table.add_column("status", no_wrap=True)
    # A lookback run reads an exported day again: its counts are late changes, not new sales.
    table.add_column("trigger", no_wrap=True)
    for column in COUNT_COLUMNS:
        table.add_column(column, justify="right")
    totals = [0] * len(COUNT_COLUMNS)
    for record in records:
        values = _counts(record)
        totals = [total + value for total, value in zip(totals, values, strict=True)]
        style = {RunStatus.FAILED: "red", RunStatus.PARTIAL: "yellow"}.get(record.status, "green")
        status = f"[{style}]{record.status}[/]"
        table.add_row(first_cell(record), status, record.trigger, *map(str, values))
    if len(records) > 1:
        table.add_section()
        table.add_row("total", "", "", *map(str, totals))
    return table


def _cost_line(records: Sequence[RunRecord]) -> str | None:
    """`Estimated AWS cost of 30 runs: $0.131663 (Bedrock Titan $0.130860, ...)`, of the runs
    that have an estimate."""
    costs = [record.cost for record in records if record.cost is not None]
    if not costs:
        return None
    by_service: dict[str, Decimal] = {}
    for cost in costs:
        for service, usd in cost.by_service().items():
            by_service[service] = by_service.get(service, Decimal(0)) + usd
    parts = ", ".join(f"{service} {_usd(usd)}" for service, usd in by_service.items())
    of = f" of {len(costs)} runs" if len(costs) > 1 else ""
    return f"Estimated AWS cost{of}: {_usd(sum(by_service.values(), Decimal(0)))} ({parts})"


def _usd(amount: Decimal) -> str:
    """To a ten-thousandth of a cent: a run's parts are often a few of those."""
    return f"${amount:,.6f}"


def _counts(record: RunRecord) -> list[int]:
    return [getattr(record.counts, name) for name in COUNT_COLUMNS]


def print_summary(summary: RunSummary) -> None:
    """`stats`: the stored runs' totals, then their failures by reason."""
    table = Table(title="Export runs", show_header=False)
    table.add_row("runs", str(summary.runs))
    table.add_row("days", f"{summary.first_day} .. {summary.last_day}")
    table.add_row("success rate", f"{summary.success_rate:.1%}")
    for status, count in sorted(summary.by_status.items()):
        table.add_row(f"  {status.lower()}", str(count))
    table.add_row("by trigger", "")
    for trigger, count in sorted(summary.by_trigger.items()):
        table.add_row(f"  {trigger}", str(count))
    table.add_row("rows written", str(summary.rows_written))
    table.add_row("rows removed", str(summary.rows_removed))
    table.add_row("late changes (lookback)", str(summary.late_changes))
    table.add_row("embedded", str(summary.embedded))
    table.add_row("reused", str(summary.reused))
    table.add_row("estimated AWS cost", _usd(summary.cost))
    for service, usd in summary.cost_by_service.items():
        table.add_row(f"  {service}", _usd(usd))
    console.print(table)
    if summary.failures_by_reason:
        failures = Table("failure (stage:reason)", "count", title="Failures by reason")
        for reason, count in summary.failures_by_reason.items():
            failures.add_row(reason, str(count))
        console.print(failures)
    _print_costs(summary)


def _print_costs(summary: RunSummary) -> None:
    """The estimated cost by month, then by day, in the UTC days AWS bills by."""
    if not summary.cost_by_day:
        return
    months = Table("month (UTC)", "est. cost", title="Estimated AWS cost by month")
    for month, usd in summary.cost_by_month.items():
        months.add_row(month, _usd(usd))
    console.print(months)
    days = Table("day (UTC)", "est. cost", title="Estimated AWS cost by day")
    for day, usd in summary.cost_by_day.items():
        days.add_row(day.isoformat(), _usd(usd))
    console.print(days)
    unpriced = (
        f"; {summary.runs_without_cost} runs without an estimate (recorded before costs were,"
        " interrupted, or still running) are not in it"
        if summary.runs_without_cost
        else ""
    )
    console.print(
        f"Estimates at AWS's us-east-1 list prices (read {PRICES_READ}), not the bill: see"
        f" smartgo_exporter.costs for what they count and leave out{unpriced}.",
        markup=False,
    )


def print_query_result(result: pa.Table, limit: int) -> None:
    """`sql`: the first `limit` rows, and how many there were when that is not all of them."""
    table = Table(*result.column_names)
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*(_cell(value) for value in row.values()))
    console.print(table)
    if result.num_rows > limit:
        console.print(f"({result.num_rows} rows, {limit} shown; use --limit)")


def _cell(value: object) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(f'{v:.3f}' for v in value[:3])}, ... ({len(value)})]"
    if isinstance(value, float):
        # Embeddings are float32: 0.955 arrives as 0.9549999833106995.
        return f"{value:.6g}"
    return "" if value is None else str(value)


def print_table_layout(name: str, table: IcebergTable) -> None:
    """`create-table`: where the table is, how it is partitioned, and its columns."""
    schema = table.schema()
    # Unwrapped and without markup, so the location can be copied as it is.
    console.print(f"{name} at {table.location()}", markup=False, soft_wrap=True)
    partitions = ", ".join(
        f"{field.transform}({schema.find_column_name(field.source_id)})"
        for field in table.spec().fields
    )
    console.print(f"partitioned by {partitions}", markup=False, soft_wrap=True)
    columns = Table("id", "column", "type", "required", title=f"{len(schema.fields)} columns")
    for field in schema.fields:
        columns.add_row(
            str(field.field_id), field.name, str(field.field_type), "yes" if field.required else ""
        )
    console.print(columns)


def print_compaction(report: CompactionReport) -> None:
    """Partitions rewritten (files and bytes before and after), then what expiry did."""
    done = report.compacted
    selected = len(done) + report.already_compact + len(report.skipped)
    console.print(
        f"{report.table}: compacted {len(done)} of {selected} partitions"
        f" (target {_size(report.target_file_bytes)} per file)",
        markup=False,
    )
    if done:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column("partition", no_wrap=True)
        for column in ("files", "size", "rows"):
            table.add_column(column, justify="right", no_wrap=True)
        for part in done:
            table.add_row(
                part.partition,
                f"{part.files_before} → {part.files_after}",
                f"{_size(part.bytes_before)} → {_size(part.bytes_after)}",
                str(part.rows),
            )
        if len(done) > 1:
            table.add_section()
            table.add_row(
                "total",
                f"{sum(p.files_before for p in done)} → {sum(p.files_after for p in done)}",
                f"{_size(sum(p.bytes_before for p in done))}"
                f" → {_size(sum(p.bytes_after for p in done))}",
                str(sum(p.rows for p in done)),
            )
        console.print(table)
    if report.skipped:
        errors.print(
            "Left as they were, concurrent commits having changed them at every attempt"
            f" (compact again later): {', '.join(report.skipped)}",
            style="yellow",
            markup=False,
        )
    console.print(
        f"Snapshots: expired {report.snapshots_expired} older than {report.keep_days} days,"
        f" kept {report.snapshots_kept}."
    )
    unreferenced = (
        f"; {report.unreferenced_files} data files ({_size(report.unreferenced_bytes)}) that no"
        " snapshot references any more stay on storage"
        if report.unreferenced_files
        else ""
    )
    console.print(f"Files deleted: none (pyiceberg 0.12 deletes no files){unreferenced}.")


def _size(count: int) -> str:
    """In binary units, as --target-mib is given: 812 bytes, 1.6 MiB, 128 MiB."""
    unit, suffix = pick_unit_and_suffix(count, ["bytes", "KiB", "MiB", "GiB", "TiB"], 1024)
    if unit == 1:
        return f"{count} bytes"
    return f"{count / unit:,.1f}".removesuffix(".0") + f" {suffix}"


@dataclasses.dataclass(frozen=True, slots=True)
class ExportProgress:
    """What an export reports to: pass both on to `export`, `backfill` or `export_on_ray`."""

    on_batch: ProgressCallback
    on_day: DayCallback


@contextlib.contextmanager
def progress_display() -> Iterator[ExportProgress]:
    """A Rich progress bar over the export's days, on stderr when it is a terminal (logs stay
    clean: the bar goes at the end); otherwise (cron, a pipe, CloudWatch) a line per finished
    day on stdout, as a bar there would show nothing until the end: a month's run through a
    pipe said nothing for minutes."""
    if not errors.is_terminal:
        yield ExportProgress(on_batch=lambda _: None, on_day=_print_day_done)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    ) as progress:
        task = progress.add_task("days exported", total=None, detail="")
        sales = 0

        def on_batch(done: BatchDone) -> None:
            nonlocal sales
            sales += done.counts.sales
            progress.update(
                task,
                total=done.days_total,
                completed=done.days_done,
                detail=f"{done.day}: {sales} sales so far",
            )

        def on_day(done: DayDone) -> None:
            progress.update(task, total=done.days_total, completed=done.days_done)

        yield ExportProgress(on_batch, on_day)


def _print_day_done(done: DayDone) -> None:
    """`2026-11-01  SUCCEEDED  412 sales, 405 written, ...  (3 of 30 days)`, and the run's
    message: a log then says how far an export got even if it never reaches its table. A
    lookback run says so after its day: `2026-10-29 (lookback)  SUCCEEDED ...`."""
    record = done.record
    counts = ", ".join(
        f"{value} {name}" for name, value in zip(COUNT_COLUMNS, _counts(record), strict=True)
    )
    status = str(record.status).ljust(max(map(len, RunStatus)))
    day = f"{record.business_date}" + (
        f" ({record.trigger})" if record.trigger == LOOKBACK_TRIGGER else ""
    )
    line = f"{day}  {status}  {counts}  ({done.days_done} of"
    line += f" {done.days_total} days)" + (f"  {record.message}" if record.message else "")
    console.print(line, markup=False, highlight=False, soft_wrap=True)
