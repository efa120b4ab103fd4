"""The similar-sales index: an HNSW graph (usearch) of one tenant's sales embedded by one model.

A search scores a few hundred vectors, not every sale, so a query stays in milliseconds at
millions of sales (benchmarks/bench_pricing.py). The table stays the truth: an index records
the snapshot it was synced to and, for each of its sales, the data file the row came from.
`sync` compares that with the table's current files: rows of files that are gone (rewritten by
an upsert, removed by compaction or a delete) leave the index, rows of new files join it. A
day's export touches the files of its own days only, so an update reads those, not the table.

Each state is saved in a folder of its own tenant and model (`smartgo_exporter.index_storage`),
its manifest replaced last, so a reader never pairs the vectors of one state with the sales of
another.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from numpy.typing import NDArray
from pyiceberg.table import FileScanTask, Table

from smartgo_exporter.config import IndexConfig, TableConfig
from smartgo_exporter.errors import IndexMismatch
from smartgo_exporter.index_storage import IndexFolder, index_configured
from smartgo_exporter.index_table import (
    ROW_SCHEMA,
    SALE_COLUMNS,
    file_identity,
    read_embedded_sales,
    tenant_files,
)
from smartgo_exporter.sinks import manifests

log = structlog.get_logger(__name__)

_FORMAT = 1
_SYNCED = "synced.json"


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

    def sync(
        self,
        table: Table,
        *,
        refresh: bool = True,
        tasks: Sequence[FileScanTask] | None = None,
    ) -> SyncReport:
        """Bring the index to the table's current snapshot, reading only files it has not seen.

        Sales of another model, without an embedding, or of files no longer current leave (or
        never join) the index; nothing else is read. Cheap when nothing changed: one catalog
        refresh and the plan of one tenant's files (`refresh=False`: the caller has refreshed;
        `tasks`: the caller has planned this tenant's files of the current snapshot, as
        `sync_indexes` plans every tenant's at once).
        """
        started = time.monotonic()
        if refresh:
            table.refresh()
        snapshot = table.current_snapshot()
        snapshot_id = snapshot.snapshot_id if snapshot is not None else None
        if snapshot_id == self.snapshot_id:
            return self._report(0, 0, 0, snapshot_id, started)
        if tasks is None:
            tasks = tenant_files(table, self.tenant) if snapshot is not None else []
        current = {task.file.file_path: file_identity(task) for task in tasks}
        gone = {path for path, identity in self._files.items() if current.get(path) != identity}
        fresh = [
            task for task in tasks if self._files.get(task.file.file_path) != file_identity(task)
        ]
        removed = self._remove_files(gone)
        added = self._add_rows(read_embedded_sales(table, fresh, self.tenant, self.model, self.dim))
        self._files = current
        self.snapshot_id = snapshot_id
        report = self._report(added, removed, len(fresh), snapshot_id, started)
        log.debug("index_synced", **dataclasses.asdict(report))
        return report

    def save(self, config: IndexConfig, table_config: TableConfig) -> None:
        """Write this state beside the table, replacing the manifest last."""
        folder = IndexFolder.of(config, table_config, self.tenant, self.model)
        tag = f"{self.snapshot_id or 0}-{time.time_ns()}"
        vectors_name, sales_name = f"vectors-{tag}.usearch", f"sales-{tag}.parquet"
        folder.write(vectors_name, bytes(self._vectors.save()))
        folder.write_table(sales_name, self._sales)
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
        folder.replace_manifest(manifest)

    @classmethod
    def load(
        cls, config: IndexConfig, table_config: TableConfig, tenant: str, model: str, dim: int
    ) -> SalesIndex:
        """The stored index of this tenant and model, or an empty one when none is stored.

        IndexMismatch when what is stored was built for another model or cannot be read.
        """
        folder = IndexFolder.of(config, table_config, tenant, model)
        manifest = folder.read_manifest()
        if manifest is None:
            return cls.empty(config, tenant, model, dim)
        if manifest.get("model") != model or manifest.get("dim") != dim:
            raise IndexMismatch(
                folder.path,
                f"built for model {manifest.get('model')!r} ({manifest.get('dim')}-d), not "
                f"{model!r} ({dim}-d); run `smartgo-exporter index --rebuild`",
            )
        if manifest.get("format") != _FORMAT or manifest.get("dtype") != config.dtype:
            return cls.empty(config, tenant, model, dim)
        try:
            from usearch.index import Index

            vectors: Any = Index.restore(folder.read(manifest["vectors"]))
            sales = folder.read_table(manifest["sales"])
        except Exception as error:  # a torn or foreign file: say which, and how to mend it
            raise IndexMismatch(
                folder.path, f"cannot be read ({error}); run `smartgo-exporter index --rebuild`"
            ) from None
        if vectors is None or sales.num_rows != len(vectors):
            raise IndexMismatch(
                folder.path,
                "its vectors and sales disagree; run `smartgo-exporter index --rebuild`",
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


def _empty_sales() -> pa.Table:
    return ROW_SCHEMA.append(pa.field("label", pa.uint64())).empty_table()


def _new_graph(config: IndexConfig, dim: int) -> Any:
    from usearch.index import Index

    return Index(
        ndim=dim,
        metric="cos",
        dtype=config.dtype,
        connectivity=config.connectivity,
        expansion_search=config.expansion_search,
    )


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

    The table's files are listed once (`sinks.manifests`) and each tenant's index is given its
    own of them: every manifest holds every tenant's files, so a listing per tenant would read
    each manifest once per tenant. `rebuild` starts each from empty
    instead of from what is stored, for an index that was built for another model or is damaged.
    Having synced every tenant, it marks the snapshot they are at for `sync_after_export`,
    but never trusts that mark itself: `index` reports on every tenant and mends an index whose
    files were lost.
    """
    table.refresh()
    mark = _synced_mark(config, table, model, dim)
    files = manifests.files_by_tenant(table)
    reports = []
    for tenant in tenants if tenants is not None else sorted(files):
        if rebuild:
            index = SalesIndex.empty(config, tenant, model, dim)
        else:
            index = SalesIndex.load(config, table_config, tenant, model, dim)
        synced_to = index.snapshot_id
        report = index.sync(table, refresh=False, tasks=files.get(tenant, []))
        if rebuild or report.snapshot_id != synced_to:
            index.save(config, table_config)
        reports.append(report)
    if tenants is None:
        # Only once every index is saved: a failure before leaves the mark of an older
        # snapshot (or none), and the next export syncs again.
        IndexFolder.of_model(config, table_config, model).write_json(_SYNCED, mark)
    return reports


def sync_after_export(
    config: IndexConfig, table_config: TableConfig, table: Table, model: str, dim: int
) -> None:
    """What an export does at its end: sync every tenant's index, if indexes are kept.

    An index is derived from the table, so failing to update one never fails the export: the
    next run, `smartgo-exporter index` or the next lookup brings it up to date.

    A run that committed nothing reads one small file and nothing else, neither a plan of the
    table nor any index: the mark `sync_indexes` writes after saving every tenant's index,
    which names the table's current snapshot. One mark, not each tenant's manifest, because
    only a plan of the table tells which tenants there are. Sales of a new tenant and a failed
    save each leave it naming an older snapshot, so the next run syncs.
    """
    if not (config.update_after_run and index_configured(config, table_config)):
        return
    try:
        table.refresh()
        if not _synced_already(config, table_config, table, model, dim):
            sync_indexes(config, table_config, table, model, dim)
    except Exception as error:  # any failure of a derived copy: logged, the export stands
        log.warning("index_update_failed", error=f"{type(error).__name__}: {error}")


def _synced_already(
    config: IndexConfig, table_config: TableConfig, table: Table, model: str, dim: int
) -> bool:
    """Whether every tenant's index of `model` is saved at the table's current snapshot."""
    folder = IndexFolder.of_model(config, table_config, model)
    try:
        return folder.read_json(_SYNCED) == _synced_mark(config, table, model, dim)
    except ValueError:  # torn by a crash while it was written: sync, which writes it anew
        return False


def _synced_mark(config: IndexConfig, table: Table, model: str, dim: int) -> dict[str, Any]:
    """What `synced.json` holds once every tenant's index is saved at the current snapshot.

    The format and precision belong to it: an index stored in another is rebuilt when loaded,
    which a mark of the snapshot alone would skip.
    """
    snapshot = table.current_snapshot()
    return {
        "format": _FORMAT,
        "model": model,
        "dim": dim,
        "dtype": config.dtype,
        "snapshot_id": snapshot.snapshot_id if snapshot is not None else None,
    }
