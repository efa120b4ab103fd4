"""The `smartgo-exporter` command: each command parses options and makes one library call.

Errors become messages for a person here and only here (`edge.guarded`); the library raises
exceptions. One module per command group holds its commands as plain functions, registered
on `app` below; `output` prints what they get back.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated

import typer

from smartgo_exporter.allocator import unmap_large_blocks
from smartgo_exporter.cli import demo, export, history, lookup, table
from smartgo_exporter.cli.edge import console

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
    unmap_large_blocks()


# In the order `--help` lists them, as before the split.
app.command("index")(lookup.index)
app.command("similar")(lookup.similar)
app.command("price")(lookup.price)
app.command("run")(export.run)
app.command("backfill")(export.backfill_command)
app.command("history")(history.history)
app.command("stats")(history.stats)
app.command("sql")(table.sql)
app.command("demo")(demo.demo)
app.command("schedule")(export.schedule)
app.command("compact")(table.compact)
app.command("create-table")(table.create_table_command)
