"""The table as the similar-sales index reads it: tenants, models, files and embedded sales.

An index is kept in step with the table file by file (`SalesIndex.sync`), so what it needs of
the table is which data files a tenant has now, what makes a file's contents the same as when
it was read, and the sales one model embedded in a file, with their vectors. Apart from
`smartgo_exporter.index` because this is the pyiceberg side: plans, scans and Arrow columns,
where the index itself only adds and removes vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, EqualTo
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table

from smartgo_exporter.schema import ARROW_SCHEMA
from smartgo_exporter.sinks import manifests

# As in sinks.key_filters: pyiceberg's predicates are pydantic models whose generated signatures
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
ROW_SCHEMA = pa.schema(
    [*(ARROW_SCHEMA.field(name) for name in SALE_COLUMNS), pa.field("data_file", pa.string())]
)
"""An indexed sale as read: SALE_COLUMNS and the data file it came from."""


def table_tenants(table: Table) -> list[str]:
    """The tenants with data files in the table's current snapshot, from its partitions."""
    return sorted(manifests.files_by_tenant(table))


def table_models(table: Table, tenant: str | None = None) -> list[str]:
    """The embedding models of the sales of a tenant (or of all), reading one column.

    For an error message, not a hot path: it reads that column of every file it covers.
    """
    row_filter = _equal_to("tenant_id", tenant) if tenant is not None else AlwaysTrue()
    models = table.scan(row_filter=row_filter, selected_fields=("embedding_model",)).to_arrow()
    return sorted(m for m in pc.unique(models.column("embedding_model")).to_pylist() if m)


def tenant_files(table: Table, tenant: str) -> list[FileScanTask]:
    return manifests.files_by_tenant(table, [tenant]).get(tenant, [])


def file_identity(task: FileScanTask) -> str:
    """A data file's path and its delete files: a new delete file changes what it holds."""
    deletes = sorted(delete.file_path for delete in task.delete_files)
    return "|".join([task.file.file_path, *deletes])


def read_embedded_sales(
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
        return sales.cast(ROW_SCHEMA), vectors

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(read, tasks))
