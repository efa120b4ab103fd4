"""The small data files a range's lookups read again and again, kept decoded while they last.

The days of a range are looked up one after another in the same files: a tenant's month is a
file or a few until compaction, and each small day's lookup read all of them anew, most of
its cost. Data files never change (a commit that rewrites one writes another under a new
name), so a decoded file stays right as long as it is kept; the cache holds the small ones, up
to a budget, least recently read first out. Large files (of a table compacted into files of
128 MiB) are read as before, only the rows the lookup's filter selects, and never kept: a
lookup of a big table must not hold its months in memory.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Sequence

import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table

SMALL_FILE_SHARE = 16
"""A file at most a sixteenth of the budget (on disk) is kept; vectors compress little, so
decoded it is about as large."""

_FileKey = tuple[str, frozenset[str]]
"""A data file and the delete files applied to it: either changing makes other rows."""


@dataclasses.dataclass
class FileCache:
    """Decoded small data files, up to `max_bytes`, for one table's lookups."""

    max_bytes: int
    _files: collections.OrderedDict[_FileKey, pa.Table] = dataclasses.field(
        default_factory=collections.OrderedDict
    )
    _bytes: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def read(
        self, table: Table, files: Sequence[FileScanTask], row_filter: BooleanExpression
    ) -> pa.Table:
        """The rows of `files` that `row_filter` may select: every row of a small file (the
        caller picks the keys it wants), the selected rows of a large one."""
        parts: list[pa.Table] = []
        large: list[FileScanTask] = []
        for task in files:
            rows = self.whole(table, task)
            if rows is None:
                large.append(task)
            else:
                parts.append(rows)
        if large or not parts:
            scan = ArrowScan(table.metadata, table.io, table.schema(), row_filter)
            parts.append(scan.to_table(large))
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def whole(self, table: Table, task: FileScanTask) -> pa.Table | None:
        """Every row of the file, kept for the next reads; None if it is too large to keep.
        Safe from several threads (a commit plans its rewrites on a few)."""
        if task.file.file_size_in_bytes > self.max_bytes // SMALL_FILE_SHARE:
            return None
        key = (task.file.file_path, frozenset(delete.file_path for delete in task.delete_files))
        with self._lock:
            rows = self._files.get(key)
            if rows is not None:
                self._files.move_to_end(key)
                return rows
        rows = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table([task])
        with self._lock:
            if key not in self._files:
                self._files[key] = rows
                self._bytes += rows.nbytes
            while self._bytes > self.max_bytes and len(self._files) > 1:
                _, dropped = self._files.popitem(last=False)
                self._bytes -= dropped.nbytes
        return rows
