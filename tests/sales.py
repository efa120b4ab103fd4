"""Reading a source's sales in the tests of every source backend (SQL, REST): the same window and
the same way of draining `Source.read`, so each backend is held to the same contract."""

from __future__ import annotations

from datetime import date

from smartgo_exporter.errors import InvalidSale
from smartgo_exporter.sales import Sale
from smartgo_exporter.sources import Source
from smartgo_exporter.windows import Window, business_day

WINDOW = business_day(date(2026, 10, 25), "Europe/London")
"""Clocks go back in London that night: a 25-hour day, 2026-10-24T23:00Z to 2026-10-26T00:00Z."""

TITLE = "  Levi's\u00a0501  jeans\u00a0 "
"""Spaces and no-break spaces around and inside, as a till's keyboard leaves a title: every
source must hand it over, and the table keep it, byte for byte."""


def read_all(
    source: Source,
    window: Window = WINDOW,
    batch_size: int = 100,
    tenants: list[str] | None = None,
) -> tuple[list[Sale], list[InvalidSale]]:
    """Every sale and every rejected row `source` yields for `window`, over all its batches."""
    sales: list[Sale] = []
    rejected: list[InvalidSale] = []
    for batch in source.read(window, batch_size, tenants or []):
        sales.extend(batch.sales)
        rejected.extend(batch.rejected)
    return sales, rejected


def ids(sales: list[Sale]) -> list[str]:
    return [sale.sale_id for sale in sales]
