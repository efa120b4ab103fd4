"""What a complete read of a day says about the table: which of its rows have left the source.

An upsert alone never removes a row, so a sale voided, deleted or moved to another day at the
source would stay in the table, and in every price suggestion, for good. The read of a day
knows every sale the source still has in it; the commit that ends that read (`SalesTable.upsert`
given a `Reconciliation`) removes, in the same snapshot as its upserts, the rows of the day
that the read did not return. Rows are removed, not kept with a deleted mark: nothing reads a
removed sale (the index, the lookups and the pricing would all have to learn to skip it), and
the table's snapshots keep the history until they expire.

Only rows whose stored `sold_at` falls in the window are touched: a sale that moved to another
day leaves its old day when the old day is read, and is written under its new one when that
day is; it is never in the table twice.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from smartgo_exporter.sales import Key
from smartgo_exporter.sinks.key_filters import key_values, keys_in


@dataclasses.dataclass(frozen=True)
class Reconciliation:
    """A window read to its end without failing, and what the read returned in it.

    Reconciliation(window.start, window.end, ("ams-jordaan",), returned={("ams-jordaan",
    "1041"), ...}, kept_sale_ids={"1044"})
    """

    start: datetime
    end: datetime
    tenant_ids: tuple[str, ...]
    """The tenants the read covered; empty: every tenant of the source."""
    returned: frozenset[Key]
    """Every valid sale the read returned, changed or not; voided ones are not among them."""
    kept_sale_ids: frozenset[str] = frozenset()
    """Ids of the rows the read rejected. A stored sale with one of them stays, whatever its
    tenant: a row that could not be read does not say its sale is gone, and bad input must
    lose nothing."""
    _returned_values: dict[str, pa.Array] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """`returned` as `keys_in` matches it, by source: built once, not for every file a commit
    may rewrite."""

    def gone(self, rows: pa.Table, source: str) -> pa.ChunkedArray:
        """Which of `rows` have left the source: of `source`, sold within the window, of a tenant
        read, and neither returned nor rejected by the read. `rows` needs the key columns and
        `sold_at`."""
        sold_at = rows.column("sold_at")
        kind = sold_at.type
        within = pc.and_(
            pc.greater_equal(sold_at, pa.scalar(self.start, kind)),
            pc.less(sold_at, pa.scalar(self.end, kind)),
        )
        mask = pc.and_(within, pc.equal(rows.column("source"), source))
        if self.tenant_ids:
            tenants = pa.array(self.tenant_ids, rows.column("tenant_id").type)
            mask = pc.and_(mask, pc.is_in(rows.column("tenant_id"), value_set=tenants))
        values = self._returned_values.get(source)
        if values is None:
            values = self._returned_values[source] = key_values(source, self.returned)
        mask = pc.and_not(mask, keys_in(rows, values))
        if self.kept_sale_ids:
            kept = pa.array(sorted(self.kept_sale_ids), rows.column("sale_id").type)
            mask = pc.and_not(mask, pc.is_in(rows.column("sale_id"), value_set=kept))
        return mask
