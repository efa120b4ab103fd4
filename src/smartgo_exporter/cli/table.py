"""The commands on the table itself: `sql` over it, `compact` it, `create-table`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from smartgo_exporter.cli.edge import DEFAULT_CONFIG, ConfigOption, LogLevel, guarded, load_settings
from smartgo_exporter.cli.output import print_compaction, print_query_result, print_table_layout
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.sinks import compaction
from smartgo_exporter.sinks.iceberg import SalesTable, create_table


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
    print_query_result(result, limit)


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
    print_compaction(report)


def create_table_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create the namespace and the partitioned table, or add the columns a newer version writes.

    Safe to run again: an existing table keeps its data files. Run it when deploying, so that
    the export's own role needs no permission to create namespaces or tables.

    Example: `smartgo-exporter create-table --config smartgo-exporter.toml`
    """
    settings = load_settings(config)
    table = guarded(lambda: create_table(settings.table))
    print_table_layout(f"{settings.table.namespace}.{settings.table.name}", table)
