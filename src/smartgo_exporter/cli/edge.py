"""What every command module of the CLI shares: the consoles, the --config option, and the edge
where a library exception becomes a one-line message and exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.errors import ExporterError

T = TypeVar("T")

console = Console()
errors = Console(stderr=True)

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
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]


def load_settings(path: Path) -> Settings:
    return guarded(lambda: load_config(path))


def guarded(call: Callable[[], T]) -> T:
    """The call's result; an ExporterError becomes its message on stderr and exit code 2."""
    try:
        return call()
    except ExporterError as error:
        # Escaped: a message may hold brackets, e.g. pip install 'smartgo-exporter[aws]'. Not
        # wrapped: in a log (cron, CloudWatch) a wrapped message would be two lines.
        errors.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from None
