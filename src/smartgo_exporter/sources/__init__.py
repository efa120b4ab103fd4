"""Where sales come from. `load_source(config)` picks the backend named by `config.type`.

The contract every backend keeps (see `Source`): given a window, yield batches of validated
sales together with the rows that could not become sales, in the order the source returns them,
without holding the whole window in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterator, Mapping
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, Protocol

from smartgo_exporter.errors import InvalidSale
from smartgo_exporter.sales import CurrencyCase, Sale, SaleWarning, is_voided, parse_sale
from smartgo_exporter.windows import Window

if TYPE_CHECKING:
    from smartgo_exporter.config import SourceConfig


@dataclasses.dataclass(frozen=True, slots=True)
class SaleBatch:
    """Up to `batch_size` source rows: those that validated, those that did not (with why), and
    how many the source marked voided (`sales.is_voided`), which are no sales at all;
    `warnings` name the sales written with another value than the source gave."""

    sales: list[Sale]
    rejected: list[InvalidSale]
    voided: int = 0
    warnings: list[SaleWarning] = dataclasses.field(default_factory=list)


class Source(Protocol):
    """A store's sales, read one window at a time.

    `read(window, batch_size, tenant_ids)` yields SaleBatch objects whose sales have
    `window.start <= sold_at < window.end` (as the source decides it) and, when `tenant_ids` is
    not empty, only those tenants. A row that cannot become a Sale is yielded in `rejected`,
    never raised; a row marked voided is counted in `voided`; a sale written otherwise than the
    source gave it (a currency upper-cased, as the source's `currency_case` allows) is named in
    `warnings`. A source that cannot be read at all (unreachable, wrong credentials, a query the
    database refuses) raises SourceError, whose message carries no secret. `close()` releases
    connections.

    A read that ends without raising has returned every sale of the window: the export then
    removes from the table the window's sales it did not return (or marked voided).

        source = load_source(settings.source)
        for batch in source.read(business_day(date(2026, 11, 26), "Europe/London"), 500, []):
            ...
    """

    def read(
        self, window: Window, batch_size: int, tenant_ids: list[str]
    ) -> Iterator[SaleBatch]: ...

    def close(self) -> None: ...


def parse_batches(
    rows: Iterator[tuple[int, Mapping[str, Any] | InvalidSale]],
    batch_size: int,
    naive_tz: tzinfo,
    currency_case: CurrencyCase,
) -> Generator[SaleBatch, None, None]:
    """Validate (position, row) pairs into batches of at most `batch_size` rows.

    Every source passes its rows, already mapped onto the sale fields, through here, so a row is
    judged, counted and batched the same way whichever backend read it; a row the source itself
    found unusable arrives as an InvalidSale. A voided row is counted, not parsed. Closing the
    batches closes `rows`, so a source's cursor or paging stops on the thread that closes them.
    """
    sales: list[Sale] = []
    rejected: list[InvalidSale] = []
    warnings: list[SaleWarning] = []
    voided = 0
    try:
        for position, raw in rows:
            if isinstance(raw, InvalidSale):
                rejected.append(raw)
            else:
                try:
                    if is_voided(raw, position=position):
                        voided += 1
                    else:
                        sales.append(
                            parse_sale(
                                raw,
                                position=position,
                                naive_tz=naive_tz,
                                currency_case=currency_case,
                                warnings=warnings,
                            )
                        )
                except InvalidSale as invalid:
                    rejected.append(invalid)
            if len(sales) + len(rejected) + voided == batch_size:
                yield SaleBatch(sales, rejected, voided, warnings)
                sales, rejected, warnings, voided = [], [], [], 0
        if sales or rejected or voided:
            yield SaleBatch(sales, rejected, voided, warnings)
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def load_source(config: SourceConfig) -> Source:
    """The Source for `config.type`: `sql` (SQLAlchemy) or `rest` (a paginated JSON API)."""
    if config.type == "sql":
        from smartgo_exporter.sources.sql import SqlSource

        return SqlSource(config)
    from smartgo_exporter.sources.rest import RestSource

    return RestSource(config)
