"""A table state's data files by tenant, read from its manifests, not planned by pyiceberg.

pyiceberg's plan binds its row filter anew and works out a residual for every file it keeps:
for the files of a tenant's every month (a commit's search for its keys wherever they are, an
index's sync) that cost four times the reading of the manifests themselves, 0.3 s against
0.08 s at 300 files in 100 manifests. Those callers need no residual, only each file's
partition and bounds, so the manifests are read here, side by side, and a manifest whose
tenant bounds hold none of the tenants is not read at all. A manifest never changes (a commit
writes new ones beside those it keeps), so what one holds is kept for the next reading, up to
`KEPT_ENTRIES`: the index's sync after a commit, or the next commit of a range, reads only the
manifests that commit wrote.

A table state with delete files (the exporter writes none, another engine may) or of another
partition spec is left to pyiceberg, which pairs delete files with the data files they apply to.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Collection, Iterable

from pyiceberg.manifest import DataFile, DataFileContent, ManifestContent, ManifestFile
from pyiceberg.table import FileScanTask, Table
from pyiceberg.utils.concurrent import ExecutorFactory

KEPT_ENTRIES = 10_000
"""Data files kept across readings, of the manifests read last: 6.5 KB each in memory (their
bounds of every column), 65 MB at most; a year of nightly files of 27 tenants."""


def files_by_tenant(
    table: Table, tenants: Collection[str] = (), source: str | None = None
) -> dict[str, list[FileScanTask]]:
    """The current snapshot's data files of `tenants` (empty: of every tenant), by tenant;
    with `source`, a file whose source bounds leave that source out is not among them."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return {}
    manifests = snapshot.manifests(table.io)
    spec = table.spec()
    wanted = sorted(tenant.encode() for tenant in tenants)

    def read(manifest: ManifestFile) -> list[FileScanTask]:
        if wanted and not _may_hold_tenants(manifest, wanted):
            return []
        return [FileScanTask(data_file) for data_file in _KEPT.data_files(table, manifest)]

    readable = spec.fields and spec.fields[0].name == "tenant_id"
    readable = readable and all(
        m.content == ManifestContent.DATA and m.partition_spec_id == spec.spec_id for m in manifests
    )
    found: Iterable[FileScanTask] = (
        itertools.chain.from_iterable(ExecutorFactory.get_or_create().map(read, manifests))
        if readable
        else table.scan().plan_files()
    )
    source_field = table.schema().find_field("source").field_id
    files: dict[str, list[FileScanTask]] = {}
    for task in found:
        tenant = str(task.file.partition[0])
        if tenants and tenant not in tenants:
            continue
        if source is not None and not _may_hold_source(task, source_field, source.encode()):
            continue
        files.setdefault(tenant, []).append(task)
    return files


def _may_hold_tenants(manifest: ManifestFile, tenants: list[bytes]) -> bool:
    """Whether the manifest's bounds of its first partition field leave room for a tenant."""
    summary = manifest.partitions[0] if manifest.partitions else None
    if summary is None or summary.lower_bound is None or summary.upper_bound is None:
        return True
    return any(summary.lower_bound <= tenant <= summary.upper_bound for tenant in tenants)


def _may_hold_source(task: FileScanTask, field: int, source: bytes) -> bool:
    lower = (task.file.lower_bounds or {}).get(field)
    upper = (task.file.upper_bounds or {}).get(field)
    # Bounds are truncated: the lower one is a prefix, the upper one lies past the values.
    return (lower is None or lower <= source) and (upper is None or source <= upper)


class _KeptEntries:
    """The live data files of the manifests read last, by manifest path, at most `limit`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._files: collections.OrderedDict[str, list[DataFile]] = collections.OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def data_files(self, table: Table, manifest: ManifestFile) -> list[DataFile]:
        with self._lock:
            files = self._files.get(manifest.manifest_path)
            if files is not None:
                self._files.move_to_end(manifest.manifest_path)
                return files
        files = [
            entry.data_file
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
            if entry.data_file.content == DataFileContent.DATA
        ]
        with self._lock:
            if manifest.manifest_path not in self._files:
                self._files[manifest.manifest_path] = files
                self._count += len(files)
            while self._count > self._limit and self._files:
                _, dropped = self._files.popitem(last=False)
                self._count -= len(dropped)
        return files


_KEPT = _KeptEntries(KEPT_ENTRIES)
