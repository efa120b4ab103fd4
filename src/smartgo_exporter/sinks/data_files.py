"""Arrow rows written as Iceberg data files, for snapshots this package builds itself.

pyiceberg's public writes (`append`, `overwrite`, `upsert`) each make a snapshot of their own.
An upsert that rewrites the files holding some keys and adds the new rows in one snapshot, and
a compaction that replaces a partition's small files, need the data files themselves to put in
a snapshot they build. The one function that writes them is private to pyiceberg
(`pyiceberg.io.pyarrow._dataframe_to_data_files`), so it is called here and nowhere else, and
pyproject bounds pyiceberg below its next minor release: an upgrade that moves or changes it is
a decision, made with the sink's tests.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable

import pyarrow as pa
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table.metadata import TableMetadata


def write_data_files(
    metadata: TableMetadata,
    rows: pa.Table,
    io: FileIO,
    commit_uuid: uuid.UUID,
    counter: itertools.count[int],
) -> Iterable[DataFile]:
    """Write `rows` as Parquet data files laid out by `metadata`'s partition spec and write
    properties (target file size), named for `commit_uuid` and numbered by `counter`."""
    return _dataframe_to_data_files(
        table_metadata=metadata, df=rows, io=io, write_uuid=commit_uuid, counter=counter
    )
