"""The `smartgo-exporter` command: each command parses options and makes one library call.

Errors become messages for a person here and only here; the library raises exceptions.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.filesize import pick_unit_and_suffix
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from smartgo_exporter import cli_lookup
from smartgo_exporter.backfill import Runner, backfill
from smartgo_exporter.cli_edge import (
    DEFAULT_CONFIG,
    ConfigOption,
    LogLevel,
    console,
    errors,
    guarded,
    load_settings,
)
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo.store import DEFAULT_SALES
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.pipeline import export
from smartgo_exporter.progress import load_progress_store
from smartgo_exporter.run_records import RunRecord, RunStatus
from smartgo_exporter.runs import BatchDone
from smartgo_exporter.sinks import compaction
from smartgo_exporter.sinks.iceberg import SalesTable, create_table
from smartgo_exporter.windows import days

if TYPE_CHECKING:
    from smartgo_exporter.demo.aws_local import AwsLocalReport

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown reflows a docstring's paragraphs to the terminal; the "rich" mode keeps every
    # source line break, which wraps ragged.
    rich_markup_mode="markdown",
)


def _show_version(shown: bool) -> None:
    if shown:
        console.print(f"smartgo-exporter {metadata.version('smartgo-exporter')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Export SmartGo sales, with photo embeddings, into an Apache Iceberg table."""


COUNT_COLUMNS = ("sales", "written", "embedded", "reused", "failed", "rejected")


app.command("index")(cli_lookup.index)
app.command("similar")(cli_lookup.similar)
app.command("price")(cli_lookup.price)


@app.command()
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
    log_level: LogLevel = "WARNING",
) -> None:
    """Export yesterday (business time zone), catching up missed days; or a day; or a range.

    SIGTERM or Ctrl-C stops it cleanly: the batches already read are committed, the day is
    recorded PARTIAL (a later run completes it), later days are left for the next run, and
    the exit status is that of the recorded runs. A second SIGTERM or Ctrl-C exits at once.

    Example: `smartgo-exporter run --config smartgo-exporter.toml --from 2026-11-01 --to 2026-11-07`
    """
    import threading

    from smartgo_exporter.scheduler import stop_on_signals

    configure_logging(log_level)
    settings = load_settings(config)
    selected = _days(day, first, last)
    with _progress_display() as on_batch, stop_on_signals(threading.Event()) as stop:
        records = guarded(
            lambda: export(settings, selected, on_batch=on_batch, should_stop=stop.is_set)
        )
    print_runs(records)
    if any(record.status is RunStatus.FAILED for record in records):
        raise typer.Exit(1)


@app.command("backfill")
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
    log_level: LogLevel = "WARNING",
) -> None:
    """Export every day of a range, each as its own run, on this machine or on a Ray cluster.

    Every day gets its run record and the table is the same whichever runner exports it: rows
    already there are not rewritten, and stored embeddings of unchanged photos are reused.

    Example: `smartgo-exporter backfill --from 2026-01-01 --to 2026-03-31 --runner ray`
    """
    configure_logging(log_level)
    settings = load_settings(config)
    with _progress_display() as on_batch:
        records = guarded(
            lambda: backfill(
                settings,
                first.date(),
                last.date(),
                runner=runner,
                ray_address=ray_address,
                on_batch=on_batch,
            )
        )
    print_runs(records)
    if any(record.status is RunStatus.FAILED for record in records):
        raise typer.Exit(1)


@app.command()
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
    store = load_progress_store(settings.progress, retention_days=settings.retention_days)
    records = store.runs_on(day.date()) if day else store.recent(limit)
    if not records:
        console.print(f"No runs recorded{f' for {day.date()}' if day else ''}.")
    elif day is None:
        print_runs(records)
    else:
        print_day(records)


@app.command()
def stats(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Summarise the stored runs: success rate, rows, failures by reason.

    Example: `smartgo-exporter stats`
    """
    settings = load_settings(config)
    summary = load_progress_store(
        settings.progress, retention_days=settings.retention_days
    ).summary()
    if not summary.runs:
        console.print("No runs recorded.")
        return
    table = Table(title="Export runs", show_header=False)
    table.add_row("runs", str(summary.runs))
    table.add_row("days", f"{summary.first_day} .. {summary.last_day}")
    table.add_row("success rate", f"{summary.success_rate:.1%}")
    for status, count in sorted(summary.by_status.items()):
        table.add_row(f"  {status.lower()}", str(count))
    table.add_row("rows written", str(summary.rows_written))
    table.add_row("embedded", str(summary.embedded))
    table.add_row("reused", str(summary.reused))
    console.print(table)
    if summary.failures_by_reason:
        failures = Table("failure (stage:reason)", "count", title="Failures by reason")
        for reason, count in summary.failures_by_reason.items():
            failures.add_row(reason, str(count))
        console.print(failures)


@app.command()
def sql(
    statement: Annotated[str, typer.Argument(help="DuckDB SQL; the table is `sales`.")],
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(help="Show at most this many rows.")] = 50,
) -> None:
    """Run SQL over the exported table (DuckDB over a pyiceberg scan).

    Example: `smartgo-exporter sql "SELECT tenant_id, count(*) FROM sales GROUP BY 1"`
    """
    settings = load_settings(config)
    result = guarded(
        lambda: SalesTable.open(
            settings.table, source=settings.export.source_name, create=False
        ).query(statement)
    )
    table = Table(*result.column_names)
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*(_cell(value) for value in row.values()))
    console.print(table)
    if result.num_rows > limit:
        console.print(f"({result.num_rows} rows, {limit} shown; use --limit)")


@app.command()
def demo(
    folder: Annotated[
        Path, typer.Option("--dir", help="Where the demo database, photos and warehouse go.")
    ] = Path("smartgo-demo"),
    fresh: Annotated[bool, typer.Option(help="Rebuild the demo data from scratch.")] = False,
    port: Annotated[int, typer.Option(help="Port of the demo's photo server.")] = 8765,
    sales: Annotated[
        int,
        typer.Option(
            min=100, help="How many sales the demo store holds; read when the store is built."
        ),
    ] = DEFAULT_SALES,
    aws_local: Annotated[
        bool,
        typer.Option(
            "--aws-local",
            help="Export through local stand-ins for SSM, Bedrock, S3 Tables and DynamoDB "
            "(SeaweedFS, moto, a Bedrock wire-format server), started for the export and "
            "stopped after it. Needs: pip install 'smartgo-exporter\\[aws-local]'.",
        ),
    ] = False,
    log_level: LogLevel = "WARNING",
) -> None:
    """Build a demo store (sales database, photos, photo server) and export all of it.

    Run it twice: the second run writes nothing and reuses every embedding.

    With --aws-local, the export takes production's AWS code paths, only the endpoints differ,
    with no AWS account: the source URL is a SecureString in SSM, photos are embedded by
    Titan's InvokeModel, rows land in S3 Tables through its Iceberg REST catalog, and runs are
    recorded in DynamoDB. The table persists in the demo folder (aws-local/); moto keeps SSM
    and DynamoDB in memory, so the run history starts empty on every run. The local Bedrock
    answers deterministic pseudo-embeddings: this proves the wiring, not the model's quality.

    Example: `smartgo-exporter demo --dir /tmp/smartgo-demo [--aws-local]`
    """
    from smartgo_exporter.demo import run_demo

    configure_logging(log_level)
    with _progress_display() as on_batch:
        outcome = guarded(
            lambda: run_demo(
                folder,
                fresh=fresh,
                port=port,
                sales=sales,
                on_batch=on_batch,
                aws_local=aws_local,
            )
        )
    store = outcome.summary
    console.print(
        f"Demo store: {store.sales} sales of {store.products} products in {store.tenants} stores"
        f" over {store.days} days; on purpose, {store.broken_links} broken photo links,"
        f" {store.sales_without_photo} sales without a photo and {store.invalid_rows} invalid rows."
    )
    print_runs(outcome.records)
    console.print(_what_changed(outcome.records))
    if outcome.aws_local is not None:
        _print_aws_local(outcome.aws_local, runs=len(outcome.records))
        return
    console.print(
        f"\nWarehouse: {outcome.paths.warehouse}\n"
        f"Try:  smartgo-exporter sql --config {outcome.paths.config} "
        '"SELECT tenant_id, count(*) AS sales, sum(sale_price) AS revenue FROM sales GROUP BY 1"'
    )


def _what_changed(records: Sequence[RunRecord]) -> str:
    """One sentence on the table, so that a re-run's "nothing changed" needs no adding up."""
    written = sum(record.counts.written for record in records)
    embedded = sum(record.counts.embedded for record in records)
    reused = sum(record.counts.reused for record in records)
    if written == 0:
        return (
            f"Nothing changed in the table: {reused} embeddings were reused from it and none"
            " was computed again."
        )
    return (
        f"{written} rows written; {embedded} sales embedded, {reused} embeddings reused from"
        " the table."
    )


def _print_aws_local(report: AwsLocalReport, runs: int) -> None:
    """What went through each local AWS server, as read back before they stopped."""

    def counted(value: int | None, what: str) -> str:
        return f"{value} {what}" if value is not None else "[red]could not be read back[/]"

    console.print(
        "\nThrough local AWS servers, on production's code paths (only endpoints differ):"
    )
    lines = Table.grid(padding=(0, 2))
    lines.add_column(no_wrap=True)
    lines.add_column()
    lines.add_row("  SSM (moto)", f"source.url = ssm://{report.source_parameter} (SecureString)")
    lines.add_row("  Bedrock (local)", f"{report.bedrock_calls} InvokeModel calls to Titan")
    lines.add_row(
        "  S3 Tables (SeaweedFS)", counted(report.table_rows, f"rows read back from {report.table}")
    )
    lines.add_row(
        "  DynamoDB (moto)",
        counted(
            report.stored_runs, f"of {runs} run records read back from {report.progress_table}"
        ),
    )
    console.print(lines)
    for problem in report.problems:
        errors.print(problem, style="red", markup=False)
    console.print(
        "The servers are stopped again. The local Bedrock answers deterministic pseudo-embeddings:"
        " they prove the wiring, not the model's quality. moto keeps SSM and DynamoDB in memory,"
        " so the run history starts empty on every run; the table persists in"
        f" {report.seaweed_data}, so a second run writes nothing.\n"
        f"Config used: {report.config} (a deployment's, but for the endpoints)."
    )


def print_runs(records: Sequence[RunRecord]) -> None:
    """The per-run summary table the CLI prints after an export and for `history`."""
    console.print(_runs_table(records, "day", lambda record: record.business_date.isoformat()))
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
        console.print(
            f"\nrun {record.run_id}: {record.status}, started {record.started_at.isoformat()}",
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
    for column in COUNT_COLUMNS:
        table.add_column(column, justify="right")
    totals = [0] * len(COUNT_COLUMNS)
    for record in records:
        c = record.counts
        values = [c.sales, c.written, c.embedded, c.reused, c.failed, c.rejected]
        totals = [total + value for total, value in zip(totals, values, strict=True)]
        style = {RunStatus.FAILED: "red", RunStatus.PARTIAL: "yellow"}.get(record.status, "green")
        table.add_row(first_cell(record), f"[{style}]{record.status}[/]", *map(str, values))
    if len(records) > 1:
        table.add_section()
        table.add_row("total", "", *map(str, totals))
    return table


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


@contextlib.contextmanager
def _progress_display() -> Iterator[Callable[[BatchDone], None]]:
    """A Rich progress bar over the export's days, on a terminal only (logs stay clean)."""
    if not sys.stderr.isatty():
        yield lambda _: None
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

        yield on_batch


def _cell(value: object) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(f'{v:.3f}' for v in value[:3])}, ... ({len(value)})]"
    if isinstance(value, float):
        # Embeddings are float32: 0.955 arrives as 0.9549999833106995.
        return f"{value:.6g}"
    return "" if value is None else str(value)


@app.command()
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
    import threading

    from smartgo_exporter.scheduler import run_schedule, stop_on_signals

    configure_logging(log_level)
    overrides = {"schedule": {"cron": cron}} if cron is not None else {}
    settings = guarded(lambda: load_config(config, **overrides))
    with stop_on_signals(threading.Event()) as stop:
        run_schedule(settings, stop_event=stop)


@app.command()
def compact(
    config: ConfigOption = DEFAULT_CONFIG,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's partitions.")] = None,
    month: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m"], help="Only this month's partitions (YYYY-MM)."),
    ] = None,
    target_mib: Annotated[
        int,
        typer.Option(
            "--target-mib",
            min=1,
            help="Size of a rewritten data file, in MiB; files of 3/4 of it or more are kept.",
        ),
    ] = compaction.DEFAULT_TARGET_FILE_BYTES // compaction.MIB,
    keep_days: Annotated[
        int,
        typer.Option(
            min=0,
            help="Expire snapshots older than this many days; the current one is always kept.",
        ),
    ] = compaction.DEFAULT_KEEP_DAYS,
    log_level: LogLevel = "WARNING",
) -> None:
    """Rewrite each partition's small data files into few large ones, then expire old snapshots.

    Each partition becomes one snapshot with exactly its rows; an export committing to it
    meanwhile is never lost (the partition is planned again, or left for the next compaction).
    --tenant and --month narrow the rewrite; expiry is table-wide. No file is deleted:
    pyiceberg cannot yet, so files no snapshot references any more are counted and left.
    Not for S3 Tables, which compacts its tables itself.

    Example: `smartgo-exporter compact --config smartgo-exporter.toml --month 2026-10 --keep-days 7`
    """
    configure_logging(log_level)
    settings = load_settings(config)
    report = guarded(
        lambda: compaction.compact(
            settings.table,
            tenant=tenant,
            month=month.date() if month else None,
            target_file_bytes=target_mib * compaction.MIB,
            keep_days=keep_days,
        )
    )
    _print_compaction(report)


def _print_compaction(report: compaction.CompactionReport) -> None:
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


@app.command("create-table")
def create_table_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create the namespace and the partitioned table, or add the columns a newer version writes.

    Safe to run again: an existing table keeps its data files. Run it when deploying, so that
    the export's own role needs no permission to create namespaces or tables.

    Example: `smartgo-exporter create-table --config smartgo-exporter.toml`
    """
    settings = load_settings(config)
    table = guarded(lambda: create_table(settings.table))
    schema = table.schema()
    # Unwrapped and without markup, so the location can be copied as it is.
    console.print(
        f"{settings.table.namespace}.{settings.table.name} at {table.location()}",
        markup=False,
        soft_wrap=True,
    )
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
