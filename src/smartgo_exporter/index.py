"""The similar-sales index: an HNSW graph (usearch) of one tenant's sales embedded by one model.

A search scores a few hundred vectors, not every sale, so a query stays in milliseconds at
millions of sales (benchmarks/bench_pricing.py). The table stays the truth: an index records
the snapshot it was synced to and, for each of its sales, the data file the row came from.
`sync` compares that with the table's current files: rows of files that are gone (rewritten by
an upsert, removed by compaction or a delete) leave the index, rows of new files join it. A
day's export touches the files of its own days only, so an update reads those, not the table.

Each (tenant, model) has a folder under the index location:

    <location>/<tenant>/<model>/manifest.json           what is current, written last
    <location>/<tenant>/<model>/vectors-<snapshot>.usearch
    <location>/<tenant>/<model>/sales-<snapshot>.parquet  label, data file and the sale's fields

A new state is written under new names and the manifest is replaced last, so a reader never
pairs the vectors of one state with the sales of another.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog
from numpy.typing import NDArray
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, EqualTo
from pyiceberg.io import FileIO, load_file_io
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table

from smartgo_exporter.config import IndexConfig, TableConfig
from smartgo_exporter.errors import ConfigError, IndexMismatch
from smartgo_exporter.schema import ARROW_SCHEMA
from smartgo_exporter.sinks.iceberg import catalog_properties

log = structlog.get_logger(__name__)

# As in sinks.iceberg: pyiceberg's predicates are pydantic models whose generated signatures
# mypy's pydantic plugin misreads; the alias keeps the documented positional form checked.
_equal_to = cast(Callable[[str, str], BooleanExpression], EqualTo)

SALE_COLUMNS = (
    "source",
    "sale_id",
    "product_id",
    "sold_at",
    "sale_price",
    "currency",
    "title",
    "brand",
    "category",
    "condition",
    "image_url",
)
"""What the index keeps of each sale beside its vector: enough to show and price a match."""
_READ_COLUMNS = (*SALE_COLUMNS, "tenant_id", "embedding", "embedding_model")
_ROW_SCHEMA = pa.schema(
    [*(ARROW_SCHEMA.field(name) for name in SALE_COLUMNS), pa.field("data_file", pa.string())]
)
_FORMAT = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Neighbour:
    """One indexed sale near a query vector; `similarity` is the cosine, 1 for the same vector."""

    sale: dict[str, Any]
    similarity: float


@dataclasses.dataclass(frozen=True, slots=True)
class SyncReport:
    """What one `sync` changed: sales added and removed, files read, and how long it took."""

    tenant: str
    model: str
    dim: int
    sales: int
    added: int
    removed: int
    files_read: int
    snapshot_id: int | None
    seconds: float


class SalesIndex:
    """The embedded sales of one tenant and one model, searchable by vector.

    Build one with `SalesIndex.empty(...)` and `sync(table)`, or `load(...)` a stored one;
    `search(vector, k)` returns the `k` nearest sales, best first.

        index = SalesIndex.load(config, table_config, "ams-jordaan", embedder.model_id)
        index.sync(table)
        for match in index.search(vector, 10):
            print(match.sale["sale_id"], match.similarity)
    """

    def __init__(
        self,
        *,
        tenant: str,
        model: str,
        dim: int,
        config: IndexConfig,
        vectors: Any,
        sales: pa.Table,
        files: dict[str, str],
        snapshot_id: int | None,
        next_label: int,
    ) -> None:
        self.tenant = tenant
        self.model = model
        self.dim = dim
        self.snapshot_id = snapshot_id
        self._config = config
        self._vectors = vectors
        self._sales = sales
        self._files = files
        """data file path -> the identity of its contents (the path and its delete files)."""
        self._next_label = next_label
        self._positions: dict[int, int] | None = None

    @classmethod
    def empty(cls, config: IndexConfig, tenant: str, model: str, dim: int) -> SalesIndex:
        return cls(
            tenant=tenant,
            model=model,
            dim=dim,
            config=config,
            vectors=_new_graph(config, dim),
            sales=_empty_sales(),
            files={},
            snapshot_id=None,
            next_label=0,
        )

    def __len__(self) -> int:
        return len(self._vectors)

    @property
    def sales(self) -> pa.Table:
        """Every indexed sale (SALE_COLUMNS, `label` and `data_file`), in label order."""
        return self._sales

    def search(
        self, vector: NDArray[np.float32], k: int, *, exclude_products: Iterable[str] = ()
    ) -> list[Neighbour]:
        """The `k` indexed sales most like `vector`, most alike first.

        `exclude_products` leaves out sales of these product ids (a benchmark pricing an item
        without its own sales); the graph is asked for more so that `k` still come back.
        """
        if k <= 0 or len(self) == 0:
            return []
        excluded = set(exclude_products)
        wanted = min(len(self), k + 4 * len(excluded))
        while True:
            matches = self._vectors.search(np.asarray(vector, np.float32), wanted)
            neighbours = self._neighbours(matches.keys, matches.distances, excluded)
            if len(neighbours) >= k or wanted >= len(self):
                return neighbours[:k]
            # An excluded product sold many times crowds the nearest out: look further.
            wanted = min(len(self), wanted * 4)

    def _neighbours(
        self, labels: NDArray[np.uint64], distances: NDArray[np.float32], excluded: set[str]
    ) -> list[Neighbour]:
        positions = self._label_positions()
        found = []
        for label, distance in zip(labels, distances, strict=True):
            position = positions.get(int(label))
            if position is None:
                continue
            sale = {name: self._sales.column(name)[position].as_py() for name in SALE_COLUMNS}
            if sale["product_id"] not in excluded:
                found.append(Neighbour(sale, 1.0 - float(distance)))
        return found

    def sync(self, table: Table, *, refresh: bool = True) -> SyncReport:
        """Bring the index to the table's current snapshot, reading only files it has not seen.

        Sales of another model, without an embedding, or of files no longer current leave (or
        never join) the index; nothing else is read. Cheap when nothing changed: one catalog
        refresh and the plan of one tenant's files (`refresh=False`: the caller has refreshed).
        """
        started = time.monotonic()
        if refresh:
            table.refresh()
        snapshot = table.current_snapshot()
        snapshot_id = snapshot.snapshot_id if snapshot is not None else None
        if snapshot_id == self.snapshot_id:
            return self._report(0, 0, 0, snapshot_id, started)
        tasks = _tenant_files(table, self.tenant) if snapshot is not None else []
        current = {task.file.file_path: _identity(task) for task in tasks}
        gone = {path for path, identity in self._files.items() if current.get(path) != identity}
        fresh = [task for task in tasks if self._files.get(task.file.file_path) != _identity(task)]
        removed = self._remove_files(gone)
        added = self._add_rows(_read_tasks(table, fresh, self.tenant, self.model, self.dim))
        self._files = current
        self.snapshot_id = snapshot_id
        report = self._report(added, removed, len(fresh), snapshot_id, started)
        log.debug("index_synced", **dataclasses.asdict(report))
        return report

    def save(self, config: IndexConfig, table_config: TableConfig) -> None:
        """Write this state beside the table, replacing the manifest last."""
        folder, io_ = _folder(config, table_config, self.tenant, self.model)
        tag = f"{self.snapshot_id or 0}-{time.time_ns()}"
        vectors_name, sales_name = f"vectors-{tag}.usearch", f"sales-{tag}.parquet"
        _write(io_, f"{folder}/{vectors_name}", bytes(self._vectors.save()))
        buffer = io.BytesIO()
        pq.write_table(self._sales, buffer, compression="zstd")
        _write(io_, f"{folder}/{sales_name}", buffer.getvalue())
        manifest = {
            "format": _FORMAT,
            "tenant": self.tenant,
            "model": self.model,
            "dim": self.dim,
            "dtype": self._config.dtype,
            "snapshot_id": self.snapshot_id,
            "next_label": self._next_label,
            "vectors": vectors_name,
            "sales": sales_name,
            "files": self._files,
        }
        previous = _read_manifest(io_, folder)
        _write(io_, f"{folder}/manifest.json", json.dumps(manifest).encode())
        if previous is not None:
            # Readers that loaded the previous manifest a moment ago may still be reading its
            # files; deleting the state before it keeps them safe without any locking.
            for name in previous.get("superseded", []):
                _delete(io_, f"{folder}/{name}")
            manifest["superseded"] = [previous["vectors"], previous["sales"]]
            _write(io_, f"{folder}/manifest.json", json.dumps(manifest).encode())

    @classmethod
    def load(
        cls, config: IndexConfig, table_config: TableConfig, tenant: str, model: str, dim: int
    ) -> SalesIndex:
        """The stored index of this tenant and model, or an empty one when none is stored.

        IndexMismatch when what is stored was built for another model or cannot be read.
        """
        folder, io_ = _folder(config, table_config, tenant, model)
        manifest = _read_manifest(io_, folder)
        if manifest is None:
            return cls.empty(config, tenant, model, dim)
        if manifest.get("model") != model or manifest.get("dim") != dim:
            raise IndexMismatch(
                folder,
                f"built for model {manifest.get('model')!r} ({manifest.get('dim')}-d), not "
                f"{model!r} ({dim}-d); run `smartgo-exporter index --rebuild`",
            )
        if manifest.get("format") != _FORMAT or manifest.get("dtype") != config.dtype:
            return cls.empty(config, tenant, model, dim)
        try:
            from usearch.index import Index

            vectors: Any = Index.restore(_read(io_, f"{folder}/{manifest['vectors']}"))
            sales = pq.read_table(io.BytesIO(_read(io_, f"{folder}/{manifest['sales']}")))
        except Exception as error:  # a torn or foreign file: say which, and how to mend it
            raise IndexMismatch(
                folder, f"cannot be read ({error}); run `smartgo-exporter index --rebuild`"
            ) from None
        if vectors is None or sales.num_rows != len(vectors):
            raise IndexMismatch(
                folder, "its vectors and sales disagree; run `smartgo-exporter index --rebuild`"
            )
        vectors.expansion_search = config.expansion_search
        return cls(
            tenant=tenant,
            model=model,
            dim=dim,
            config=config,
            vectors=vectors,
            sales=sales,
            files=dict(manifest["files"]),
            snapshot_id=manifest["snapshot_id"],
            next_label=int(manifest["next_label"]),
        )

    def _remove_files(self, paths: set[str]) -> int:
        if not paths or self._sales.num_rows == 0:
            return 0
        leaving = pc.is_in(self._sales.column("data_file"), value_set=pa.array(sorted(paths)))
        labels = self._sales.filter(leaving).column("label").to_numpy()
        if len(labels):
            self._vectors.remove(labels)
        self._sales = self._sales.filter(pc.invert(leaving))
        self._positions = None
        return len(labels)

    def _add_rows(self, batches: Sequence[tuple[pa.Table, NDArray[np.float32]]]) -> int:
        added = 0
        for rows, vectors in batches:
            if rows.num_rows == 0:
                continue
            labels = np.arange(self._next_label, self._next_label + rows.num_rows, dtype=np.uint64)
            self._next_label += rows.num_rows
            self._vectors.add(labels, vectors)
            self._sales = pa.concat_tables(
                [self._sales, rows.append_column("label", pa.array(labels, pa.uint64()))]
            )
            added += rows.num_rows
        self._positions = None
        return added

    def _label_positions(self) -> dict[int, int]:
        if self._positions is None:
            labels = self._sales.column("label").to_numpy()
            self._positions = {int(label): position for position, label in enumerate(labels)}
        return self._positions

    def _report(
        self, added: int, removed: int, files: int, snapshot_id: int | None, started: float
    ) -> SyncReport:
        return SyncReport(
            tenant=self.tenant,
            model=self.model,
            dim=self.dim,
            sales=len(self),
            added=added,
            removed=removed,
            files_read=files,
            snapshot_id=snapshot_id,
            seconds=time.monotonic() - started,
        )


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


def table_tenants(table: Table) -> list[str]:
    """The tenants with data files in the table's current snapshot, from its partitions."""
    if table.current_snapshot() is None:
        return []
    return sorted({str(task.file.partition[0]) for task in table.scan().plan_files()})


def table_models(table: Table, tenant: str | None = None) -> list[str]:
    """The embedding models of the sales of a tenant (or of all), reading one column.

    For an error message, not a hot path: it reads that column of every file it covers.
    """
    row_filter = _equal_to("tenant_id", tenant) if tenant is not None else AlwaysTrue()
    models = table.scan(row_filter=row_filter, selected_fields=("embedding_model",)).to_arrow()
    return sorted(m for m in pc.unique(models.column("embedding_model")).to_pylist() if m)


def _tenant_files(table: Table, tenant: str) -> list[FileScanTask]:
    row_filter = _equal_to("tenant_id", tenant)
    return list(table.scan(row_filter=row_filter).plan_files())


def _identity(task: FileScanTask) -> str:
    """A data file's path and its delete files: a new delete file changes what it holds."""
    deletes = sorted(delete.file_path for delete in task.delete_files)
    return "|".join([task.file.file_path, *deletes])


def _read_tasks(
    table: Table, tasks: Sequence[FileScanTask], tenant: str, model: str, dim: int
) -> list[tuple[pa.Table, NDArray[np.float32]]]:
    """Per file, the tenant's sales embedded by `model` and their vectors as one matrix."""
    schema = table.schema().select(*_READ_COLUMNS)

    def read(task: FileScanTask) -> tuple[pa.Table, NDArray[np.float32]]:
        rows = ArrowScan(
            table_metadata=table.metadata,
            io=table.io,
            projected_schema=schema,
            row_filter=AlwaysTrue(),
        ).to_table(tasks=[task])
        keep = pc.and_(
            pc.and_(pc.equal(rows.column("tenant_id"), tenant), pc.is_valid(rows["embedding"])),
            pc.equal(rows.column("embedding_model"), model),
        )
        rows = rows.filter(pc.fill_null(keep, False))
        flat = pc.list_flatten(rows.column("embedding")).to_numpy(zero_copy_only=False)
        vectors = np.asarray(flat, np.float32).reshape(rows.num_rows, dim)
        sales = rows.select(list(SALE_COLUMNS)).append_column(
            "data_file", pa.array([task.file.file_path] * rows.num_rows, pa.string())
        )
        return sales.cast(_ROW_SCHEMA), vectors

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(read, tasks))


def _empty_sales() -> pa.Table:
    return _ROW_SCHEMA.append(pa.field("label", pa.uint64())).empty_table()


def _new_graph(config: IndexConfig, dim: int) -> Any:
    from usearch.index import Index

    return Index(
        ndim=dim,
        metric="cos",
        dtype=config.dtype,
        connectivity=config.connectivity,
        expansion_search=config.expansion_search,
    )


def _folder(
    config: IndexConfig, table_config: TableConfig, tenant: str, model: str
) -> tuple[str, FileIO]:
    root = index_location(config, table_config)
    folder = f"{root}/{_segment(tenant)}/{_segment(model)}"
    return folder, load_file_io(catalog_properties(table_config), root)


def _segment(name: str) -> str:
    """A tenant id or model id as one path segment: ':' and '/' are not safe in object keys."""
    return urllib.parse.quote(name, safe="-_.")


def _read_manifest(io_: FileIO, folder: str) -> dict[str, Any] | None:
    source = io_.new_input(f"{folder}/manifest.json")
    if not source.exists():
        return None
    manifest: dict[str, Any] = json.loads(_read(io_, f"{folder}/manifest.json"))
    return manifest


def _read(io_: FileIO, path: str) -> bytes:
    with io_.new_input(path).open() as stream:
        return stream.read()


def _write(io_: FileIO, path: str, data: bytes) -> None:
    with io_.new_output(path).create(overwrite=True) as stream:
        stream.write(data)


def _delete(io_: FileIO, path: str) -> None:
    try:
        io_.delete(path)
    except (FileNotFoundError, OSError) as error:
        log.warning("index_file_not_deleted", path=path, error=str(error))


def sync_indexes(
    config: IndexConfig,
    table_config: TableConfig,
    table: Table,
    model: str,
    dim: int,
    *,
    tenants: Sequence[str] | None = None,
    rebuild: bool = False,
) -> list[SyncReport]:
    """Load, sync and save the index of each tenant (every tenant in the table by default).

    `rebuild` starts each from empty instead of from what is stored, for an index that was
    built for another model or is damaged.
    """
    reports = []
    for tenant in tenants if tenants is not None else table_tenants(table):
        if rebuild:
            index = SalesIndex.empty(config, tenant, model, dim)
        else:
            index = SalesIndex.load(config, table_config, tenant, model, dim)
        synced_to = index.snapshot_id
        report = index.sync(table)
        if rebuild or report.snapshot_id != synced_to:
            index.save(config, table_config)
        reports.append(report)
    return reports


def sync_after_export(
    config: IndexConfig, table_config: TableConfig, table: Table, model: str, dim: int
) -> None:
    """What an export does at its end: sync every tenant's index, if indexes are kept.

    An index is derived from the table, so failing to update one never fails the export: the
    next run, `smartgo-exporter index` or the next lookup brings it up to date.
    """
    if not (config.update_after_run and index_configured(config, table_config)):
        return
    try:
        sync_indexes(config, table_config, table, model, dim)
    except Exception as error:  # any failure of a derived copy: logged, the export stands
        log.warning("index_update_failed", error=f"{type(error).__name__}: {error}")


def index_configured(config: IndexConfig, table_config: TableConfig) -> bool:
    """Whether an index location is known: configured, or derivable from a file:// warehouse."""
    return bool(config.location) or table_config.catalog.get("warehouse", "").startswith("file://")
