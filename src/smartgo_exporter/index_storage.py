"""Where a similar-sales index is kept, and how a new state of it replaces the one before.

Each (tenant, model) has a folder under the index location:

    <location>/<tenant>/<model>/manifest.json           what is current, written last
    <location>/<tenant>/<model>/vectors-<snapshot>.usearch
    <location>/<tenant>/<model>/sales-<snapshot>.parquet  label, data file and the sale's fields

A new state is written under new names and the manifest is replaced last, so a reader never
pairs the vectors of one state with the sales of another. Beside the tenants' folders, a folder
per model holds what is true of every tenant's index of it at once:

    <location>/<model>/synced.json   the snapshot all of them were saved at, written after them

Apart from `smartgo_exporter.index` because this is about files, not the graph: the folder is
reached with the table's own FileIO, so a local folder and an S3 prefix are the same to the
index, and what a manifest names is read and written here only.
"""

from __future__ import annotations

import dataclasses
import io
import json
import urllib.parse
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import structlog
from pyiceberg.io import FileIO, load_file_io

from smartgo_exporter.config import IndexConfig, TableConfig
from smartgo_exporter.errors import ConfigError
from smartgo_exporter.sinks.catalog import catalog_properties

log = structlog.get_logger(__name__)


def index_location(config: IndexConfig, table_config: TableConfig) -> str:
    """Where indexes live: the configured location, or `index` beside a file:// warehouse."""
    if config.location:
        return config.location.rstrip("/")
    warehouse = table_config.catalog.get("warehouse", "")
    if warehouse.startswith("file://"):
        return warehouse.rstrip("/").rsplit("/", 1)[0] + "/index"
    raise ConfigError(
        "index.location",
        "set it to a folder or an s3:// prefix: the warehouse is not a local folder to put the "
        "index beside",
    )


def index_configured(config: IndexConfig, table_config: TableConfig) -> bool:
    """Whether an index location is known: configured, or derivable from a file:// warehouse."""
    return bool(config.location) or table_config.catalog.get("warehouse", "").startswith("file://")


@dataclasses.dataclass(frozen=True, slots=True)
class IndexFolder:
    """The folder of one tenant's index for one model, and the FileIO that reaches it.

    folder = IndexFolder.of(config, table_config, "ams-jordaan", embedder.model_id)
    manifest = folder.read_manifest()  # None when no index is stored there
    """

    path: str
    io: FileIO

    @classmethod
    def of(
        cls, config: IndexConfig, table_config: TableConfig, tenant: str, model: str
    ) -> IndexFolder:
        return cls._under(config, table_config, f"{_segment(tenant)}/{_segment(model)}")

    @classmethod
    def of_model(cls, config: IndexConfig, table_config: TableConfig, model: str) -> IndexFolder:
        """The folder of what holds for every tenant's index of `model` at once."""
        return cls._under(config, table_config, _segment(model))

    @classmethod
    def _under(cls, config: IndexConfig, table_config: TableConfig, folder: str) -> IndexFolder:
        root = index_location(config, table_config)
        return cls(f"{root}/{folder}", load_file_io(catalog_properties(table_config), root))

    def read_manifest(self) -> dict[str, Any] | None:
        return self.read_json("manifest.json")

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON object stored as `name`, or None when there is none."""
        if not self.io.new_input(f"{self.path}/{name}").exists():
            return None
        document: dict[str, Any] = json.loads(self.read(name))
        return document

    def read(self, name: str) -> bytes:
        with self.io.new_input(f"{self.path}/{name}").open() as stream:
            return stream.read()

    def read_table(self, name: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read(name)))

    def write(self, name: str, data: bytes) -> None:
        with self.io.new_output(f"{self.path}/{name}").create(overwrite=True) as stream:
            stream.write(data)

    def write_json(self, name: str, document: dict[str, Any]) -> None:
        self.write(name, json.dumps(document).encode())

    def write_table(self, name: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write(name, buffer.getvalue())

    def replace_manifest(self, manifest: dict[str, Any]) -> None:
        """Make `manifest` (whose files are written already) current, and delete old files.

        `manifest` gains `superseded`: the files of the state it replaces, deleted by the
        replacement after it.
        """
        previous = self.read_manifest()
        self.write_json("manifest.json", manifest)
        if previous is not None:
            # Readers that loaded the previous manifest a moment ago may still be reading its
            # files; deleting the state before it keeps them safe without any locking.
            for name in previous.get("superseded", []):
                self._delete(name)
            manifest["superseded"] = [previous["vectors"], previous["sales"]]
            self.write_json("manifest.json", manifest)

    def _delete(self, name: str) -> None:
        path = f"{self.path}/{name}"
        try:
            self.io.delete(path)
        except (FileNotFoundError, OSError) as error:
            log.warning("index_file_not_deleted", path=path, error=str(error))


def _segment(name: str) -> str:
    """A tenant id or model id as one path segment: ':' and '/' are not safe in object keys."""
    return urllib.parse.quote(name, safe="-_.")
