"""A suggested price from the sales most like a new item, adjusted for what is known of it.

Resale prices are products of a few factors: what the item is (which the photo's neighbours
say), its brand, its condition, and noise. So each comparable sale's price is moved to the new
item's brand and condition by the ratio of their typical price levels, then the comparables
vote, weighted by how alike they look. The levels are learnt from the tenant's own sales:
a condition's (or a brand's) level is the median, over its sales, of price over the median
price of the sale's category. benchmarks/bench_pricing.py measured each part; see
BENCHMARKS.md for what each one gained.

Only sales in the currency asked for are used: converting would put an exchange rate into a
price that no sale ever had.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MIN_LEVEL_SALES = 5
"""Sales a brand or condition needs before its price level is trusted; below, it counts as 1."""


@dataclasses.dataclass(frozen=True, slots=True)
class PricingRules:
    """How comparables are chosen and weighed; the defaults are what the benchmark kept.

    `neighbours` are asked of the index; those under `min_similarity`, or more than
    `similarity_window` below the best one, are not comparable. A comparable weighs
    exp((similarity - best) / `temperature`) times `same_brand_weight` when it shares the
    item's brand. `min_comparables` is the fewest sales a suggestion rests on.
    """

    neighbours: int = 50
    min_similarity: float = 0.5
    similarity_window: float = 0.25
    temperature: float = 0.1
    same_brand_weight: float = 2.0
    adjust_condition: bool = True
    adjust_brand: bool = True
    min_comparables: int = 3


DEFAULT_RULES = PricingRules()


@dataclasses.dataclass(frozen=True, slots=True)
class PriceLevels:
    """Typical price level of each brand and condition, relative to its category's median."""

    conditions: Mapping[str, float]
    brands: Mapping[str, float]
    known_brands: frozenset[str] = frozenset()
    """Every brand sold, levels or not: what a title can be matched against."""
    currencies: frozenset[str] = frozenset()
    """Every currency sold in: a suggestion in another has nothing to rest on."""

    @classmethod
    def from_sales(cls, sales: pa.Table) -> PriceLevels:
        """Levels from a table with `sale_price`, `category`, `brand` and `condition`."""
        if sales.num_rows == 0:
            return cls({}, {})
        prices = pc.cast(sales.column("sale_price"), pa.float64()).to_numpy(zero_copy_only=False)
        categories = _names(sales, "category")
        log_price = np.log(np.maximum(prices, 0.01))
        relative = log_price - _group_median(log_price, categories)
        condition_names = _names(sales, "condition")
        conditions = _levels(relative, condition_names)
        condition_part = np.array(
            [math.log(conditions.get(c, 1.0)) if c is not None else 0.0 for c in condition_names]
        )
        brand_names = _names(sales, "brand")
        brands = _levels(relative - condition_part, brand_names)
        return cls(
            conditions,
            brands,
            frozenset(b for b in brand_names if b),
            frozenset(sales.column("currency").to_pylist()),
        )

    def brand_in(self, title: str | None) -> str | None:
        """The longest known brand the title names (a title usually starts with its brand)."""
        if not title:
            return None
        folded = f" {(_compared(title) or '').casefold()} "
        named = [brand for brand in self.known_brands if f" {brand.casefold()} " in folded]
        return max(named, key=len) if named else None


@dataclasses.dataclass(frozen=True, slots=True)
class Comparable:
    """A sale a suggestion rests on: its price moved to the item's brand and condition."""

    sale: Mapping[str, Any]
    similarity: float
    adjusted_price: float
    weight: float


@dataclasses.dataclass(frozen=True, slots=True)
class PriceSuggestion:
    """A price with its interval, or `price` None and `reason` saying why there is none.

    `low` and `high` are the weighted 25th and 75th percentiles of the comparables' adjusted
    prices; `similarity` is their weighted mean similarity to the item.
    """

    price: Decimal | None
    low: Decimal | None
    high: Decimal | None
    currency: str | None
    comparables: Sequence[Comparable]
    similarity: float | None
    brand: str | None
    condition: str | None
    reason: str | None = None


def suggest(
    neighbours: Sequence[tuple[Mapping[str, Any], float]],
    levels: PriceLevels,
    *,
    brand: str | None = None,
    condition: str | None = None,
    currency: str | None = None,
    rules: PricingRules = DEFAULT_RULES,
) -> PriceSuggestion:
    """The price the neighbours (sale, similarity), best first, suggest for the item.

    Without `currency`, the currency most of the neighbours were sold in is used.
    """
    brand, condition = _compared(brand), _compared(condition)
    if currency is None:
        counted = Counter(sale["currency"] for sale, _ in neighbours)
        currency = counted.most_common(1)[0][0] if counted else None
    in_currency = [(sale, sim) for sale, sim in neighbours if sale["currency"] == currency]
    best = in_currency[0][1] if in_currency else 0.0
    close = [
        (sale, sim)
        for sale, sim in in_currency
        if sim >= rules.min_similarity and sim >= best - rules.similarity_window
    ]

    def none(reason: str) -> PriceSuggestion:
        return PriceSuggestion(None, None, None, currency, (), None, brand, condition, reason)

    if not neighbours:
        return none("no embedded sales to compare with")
    if not in_currency:
        return none(f"no sales in {currency} among the {len(neighbours)} most alike")
    if len(close) < rules.min_comparables:
        return none(
            f"too few comparable sales: {len(close)} of the {len(in_currency)} most alike in "
            f"{currency} are similar enough (at least {rules.min_similarity:.2f}), and a "
            f"suggestion needs {rules.min_comparables}"
        )
    comparables = [
        Comparable(
            sale,
            sim,
            _adjusted(sale, levels, brand, condition, rules),
            math.exp((sim - best) / rules.temperature)
            * (rules.same_brand_weight if brand and _compared(sale["brand"]) == brand else 1.0),
        )
        for sale, sim in close
    ]
    prices = np.array([c.adjusted_price for c in comparables])
    weights = np.array([c.weight for c in comparables])
    low, mid, high = (_weighted_quantile(prices, weights, q) for q in (0.25, 0.5, 0.75))
    return PriceSuggestion(
        price=_money(mid),
        low=_money(low),
        high=_money(high),
        currency=currency,
        comparables=comparables,
        similarity=float(np.average([c.similarity for c in comparables], weights=weights)),
        brand=brand,
        condition=condition,
    )


def _adjusted(
    sale: Mapping[str, Any],
    levels: PriceLevels,
    brand: str | None,
    condition: str | None,
    rules: PricingRules,
) -> float:
    price = float(sale["sale_price"])
    sale_condition, sale_brand = _compared(sale["condition"]), _compared(sale["brand"])
    if rules.adjust_condition and condition is not None and sale_condition is not None:
        price *= levels.conditions.get(condition, 1.0) / levels.conditions.get(sale_condition, 1.0)
    if rules.adjust_brand and brand is not None and sale_brand is not None:
        price *= levels.brands.get(brand, 1.0) / levels.brands.get(sale_brand, 1.0)
    return price


def _compared(name: str | None) -> str | None:
    """A brand, condition or category as pricing compares it: without the spaces around it and
    with each run of spaces inside one space, no-break spaces included; None when blank.

    The table keeps names exactly as the source wrote them, so "Levi's", "Levi's " and
    "Levi's\u00a0" may all be there: for a price they are one brand.
    """
    if name is None:
        return None
    return " ".join(name.split()) or None


def _names(sales: pa.Table, column: str) -> list[str | None]:
    return [_compared(name) for name in sales.column(column).to_pylist()]


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The value below which a share `q` of the weight lies, interpolating between midpoints."""
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    cumulative = np.cumsum(weights) - weights / 2
    return float(np.interp(q * weights.sum(), cumulative, values))


def _money(value: float) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


def _group_median(values: np.ndarray, groups: Sequence[Any]) -> np.ndarray:
    """Each value's group median (groups of None share one)."""
    medians: dict[Any, float] = {}
    keys = np.array([str(g) for g in groups])
    for key in set(keys.tolist()):
        medians[key] = float(np.median(values[keys == key]))
    return np.array([medians[key] for key in keys.tolist()])


def _levels(relative: np.ndarray, groups: Sequence[str | None]) -> dict[str, float]:
    keys = np.array([g if g is not None else "" for g in groups])
    levels = {}
    for key in set(keys.tolist()) - {""}:
        chosen = relative[keys == key]
        if len(chosen) >= MIN_LEVEL_SALES:
            levels[key] = float(math.exp(np.median(chosen)))
    return levels
