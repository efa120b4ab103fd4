"""Finding a batch's keys in the table: predicates that prune its files, a mask for its rows.

A sale is found by (source, tenant_id, sale_id). pyiceberg skips whole files by a predicate
and their statistics, but a predicate that names every key is slow to bind and, past 200 ids,
prunes nothing; so the predicates here say what prunes (the source, the tenants, a range of
ids or of `sold_at`) and Arrow then picks the rows out with `key_mask`. Apart from
`sinks.iceberg` so that what pyiceberg does with each kind of predicate, which decided their
shape, is said once beside them, and the table's reads and writes just use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import reduce
from typing import cast

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import (
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThan,
    LessThanOrEqual,
    Or,
)

from smartgo_exporter.sales import Key

# pyiceberg's predicates are pydantic models whose generated signatures mypy's pydantic plugin
# misreads; these aliases keep the documented positional form type-checked.
_equal_to = cast(Callable[[str, str], BooleanExpression], EqualTo)
_in = cast(Callable[[str, set[str]], BooleanExpression], In)
_at_least = cast(Callable[[str, str], BooleanExpression], GreaterThanOrEqual)
_at_most = cast(Callable[[str, str], BooleanExpression], LessThanOrEqual)
_before = cast(Callable[[str, str], BooleanExpression], LessThan)


def tenant_filter(source: str, keys: Iterable[Key]) -> BooleanExpression:
    """The files of these keys' tenants, of `source`: what a plan by tenant reads."""
    either: Callable[[BooleanExpression, BooleanExpression], BooleanExpression] = Or
    tenants = {tenant for tenant, _ in keys}
    return And(
        _equal_to("source", source),
        reduce(either, [_equal_to("tenant_id", tenant) for tenant in tenants]),
    )


def key_filter(source: str, keys: Iterable[Key]) -> BooleanExpression:
    """Exactly these keys, said so that whole files are skipped by their statistics.

    The sale id's range is redundant with the set but is what prunes: pyiceberg checks a
    set of more than 200 values against a file's bounds not at all, a range always. Point
    of sale ids grow with time, so a batch's range overlaps few files and a lookup reads
    what the batch may touch, not the whole tenant.
    """
    by_tenant: dict[str, set[str]] = {}
    for tenant, sale in keys:
        by_tenant.setdefault(tenant, set()).add(sale)
    per_tenant: list[BooleanExpression] = [
        And(
            _equal_to("tenant_id", tenant),
            _at_least("sale_id", min(sales)),
            _at_most("sale_id", max(sales)),
            _in("sale_id", sales),
        )
        for tenant, sales in by_tenant.items()
    ]
    either: Callable[[BooleanExpression, BooleanExpression], BooleanExpression] = Or
    return And(_equal_to("source", source), reduce(either, per_tenant))


def sold_within_filter(
    source: str, keys: Iterable[Key], first: datetime, last: datetime
) -> BooleanExpression:
    """The files of these keys' tenants holding sales from `first` to `last`, both included."""
    return And(
        tenant_filter(source, keys),
        _at_least("sold_at", first.isoformat()),
        _at_most("sold_at", last.isoformat()),
    )


def window_filter(
    source: str, tenant_ids: Sequence[str], start: datetime, end: datetime
) -> BooleanExpression:
    """The files of `source` holding sales from `start` (included) to `end` (excluded), of these
    tenants, or of every tenant when `tenant_ids` is empty: a day's files, by partition and by
    the statistics of `sold_at`."""
    either: Callable[[BooleanExpression, BooleanExpression], BooleanExpression] = Or
    scope = _equal_to("source", source)
    if tenant_ids:
        scope = And(scope, reduce(either, [_equal_to("tenant_id", t) for t in set(tenant_ids)]))
    return And(scope, _at_least("sold_at", start.isoformat()), _before("sold_at", end.isoformat()))


def key_mask(table: pa.Table, source: str, keys: Sequence[Key]) -> pa.ChunkedArray:
    """Which rows of `table` have one of `keys`."""
    return keys_in(table, key_values(source, keys))


def key_values(source: str, keys: Iterable[Key]) -> pa.Array:
    """The keys as `keys_in` matches them; a separator no id contains joins the pair. Built once
    for a commit or a day: a commit tests the same keys against every file it may rewrite."""
    return pa.array([f"{source}\x1f{tenant}\x1f{sale}" for tenant, sale in keys], pa.large_string())


def keys_in(table: pa.Table, values: pa.Array) -> pa.ChunkedArray:
    """Which rows of `table` have one of the keys of `values` (`key_values`)."""
    joined = pc.binary_join_element_wise(
        table.column("source").cast(pa.large_string()),
        table.column("tenant_id").cast(pa.large_string()),
        table.column("sale_id").cast(pa.large_string()),
        pa.scalar("\x1f", pa.large_string()),
    )
    return pc.is_in(joined, value_set=values)
