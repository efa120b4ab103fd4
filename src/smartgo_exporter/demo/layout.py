"""Where a demo's files live, and the config file that lets `smartgo-exporter run` use them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from smartgo_exporter.demo.server import DEFAULT_PHOTO_HOST
from smartgo_exporter.demo.store import SALE_COLUMNS, SALES_TABLE


@dataclasses.dataclass(frozen=True, slots=True)
class DemoPaths:
    """Where a demo's files live under one folder; the written config names them relative to it."""

    root: Path

    @property
    def sales_db(self) -> Path:
        return self.root / "sales.db"

    @property
    def photos(self) -> Path:
        return self.root / "photos"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def progress_db(self) -> Path:
        return self.root / "progress.db"

    @property
    def config(self) -> Path:
        return self.root / "smartgo-exporter.toml"


def _toml(value: str | Sequence[str]) -> str:
    # A JSON string is a valid TOML basic string.
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(json.dumps(item) for item in value) + "]"


def write_demo_config(
    paths: DemoPaths, *, allow_networks: Sequence[str] = (f"{DEFAULT_PHOTO_HOST}/32",)
) -> Path:
    """Write the config a user passes to `smartgo-exporter run --config`; return its path.

    Paths in it are relative, so the demo folder can move; the exporter reads them relative to
    the file's folder. Loopback is allowed for photos only because the demo serves its own.
    """
    relative = {
        "sales": paths.sales_db.relative_to(paths.root).as_posix(),
        "warehouse": paths.warehouse.relative_to(paths.root).as_posix(),
        "progress": paths.progress_db.relative_to(paths.root).as_posix(),
    }
    columns = "\n".join(f"{field} = {_toml(column)}" for field, column in SALE_COLUMNS.items())
    text = f"""\
# The smartgo-exporter demo: a SmartGo store on this machine. Written by `smartgo-exporter demo`;
# paths are relative to this file's folder.

[export]
timezone = "UTC"

[source]
type = "sql"
url = {_toml("sqlite:///" + relative["sales"])}
table = {_toml(SALES_TABLE)}
timezone = "UTC"

[source.columns]
{columns}

[photos]
# The demo's own photo server runs on loopback, which is refused unless allowed here.
allow_networks = {_toml(list(allow_networks))}

[table.catalog]
type = "sql"
uri = {_toml("sqlite:///" + relative["warehouse"] + "/catalog.db")}
warehouse = {_toml("file://" + relative["warehouse"])}

[progress]
type = "sqlite"
path = {_toml(relative["progress"])}
"""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(text, encoding="utf-8")
    return paths.config
