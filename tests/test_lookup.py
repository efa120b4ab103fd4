"""Similar sales and price suggestions: real model, real index, real table.

The demo store's three days are exported once for the module; tests that change the table
export a copy of their own.
"""

from __future__ import annotations

import io
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image, ImageOps
from pyiceberg.expressions import EqualTo
from typer.testing import CliRunner

from smartgo_exporter import load_config
from smartgo_exporter.cli import app
from smartgo_exporter.config import IndexConfig, Settings
from smartgo_exporter.demo import DemoCatalog, DemoPaths
from smartgo_exporter.demo.plan import DemoProduct, PhotoState
from smartgo_exporter.errors import (
    IndexMismatch,
    NoSalesInCurrency,
    PhotoUnreadable,
    UnknownTenant,
)
from smartgo_exporter.index import SalesIndex
from smartgo_exporter.lookup import Lookup, update_indexes
from smartgo_exporter.pipeline import export
from smartgo_exporter.pricing import PriceLevels, PricingRules, suggest
from smartgo_exporter.sinks.iceberg import load_table
from smartgo_exporter.windows import days
from tests.demo_store import DAYS, FIRST_DAY, copy_of_store, table_rows

LAST_DAY = FIRST_DAY.replace(day=FIRST_DAY.day + DAYS - 1)
runner = CliRunner()


def _export(paths: DemoPaths, first: object = FIRST_DAY, last: object = LAST_DAY) -> Settings:
    settings = load_config(paths.config)
    records = export(settings, list(days(first, last)))  # type: ignore[arg-type]
    assert all(record.status.value in ("SUCCEEDED", "PARTIAL") for record in records)
    return settings


@pytest.fixture(scope="module")
def exported(
    store: tuple[DemoPaths, DemoCatalog], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, DemoCatalog]:
    """The demo store's days exported once, with the index `run` brings up to date."""
    paths = copy_of_store(store[0], tmp_path_factory.mktemp("exported"))
    return _export(paths), store[1]


@pytest.fixture(scope="module")
def lookup(exported: tuple[Settings, DemoCatalog]) -> Lookup:
    return Lookup(exported[0])


def _photographed(catalog: DemoCatalog) -> list[DemoProduct]:
    return [p for p in catalog.products if p.photo is PhotoState.OK and p.photo_name]


def new_shot(photo: Path) -> bytes:
    """Another photo of the item: mirrored, turned 12 degrees, smaller and off centre on a
    backdrop of another colour, and saved as WebP."""
    with Image.open(photo) as image:
        item = ImageOps.mirror(image.convert("RGB"))
    turned = item.rotate(12, expand=True, fillcolor=(214, 222, 230))
    canvas = Image.new("RGB", (turned.width * 3 // 2, turned.height * 5 // 4), (214, 222, 230))
    canvas.paste(turned, (turned.width // 3, turned.height // 10))
    buffer = io.BytesIO()
    canvas.save(buffer, "WEBP", quality=80)
    return buffer.getvalue()


def test_another_shot_of_a_known_item_is_found_in_the_top_5(
    exported: tuple[Settings, DemoCatalog], lookup: Lookup, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    products = _photographed(exported[1])[:8]
    found = 0
    for product in products:
        shot = new_shot(store[0].photos / str(product.photo_name))
        matches = lookup.similar(shot, tenant=product.store_id, k=5)
        found += any(match.product_id == product.sku for match in matches)
    assert found == len(products)


def test_a_tenants_search_never_returns_another_tenants_sales(
    exported: tuple[Settings, DemoCatalog], lookup: Lookup, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    product = _photographed(exported[1])[0]
    others = {p.store_id for p in exported[1].products} - {product.store_id}
    photo = (store[0].photos / str(product.photo_name)).read_bytes()
    for tenant in others:
        matches = lookup.similar(photo, tenant=tenant, k=50)
        assert matches
        assert {match.tenant_id for match in matches} == {tenant}


def test_a_search_of_every_tenant_merges_them_by_similarity(
    exported: tuple[Settings, DemoCatalog], lookup: Lookup, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    product = _photographed(exported[1])[0]
    photo = (store[0].photos / str(product.photo_name)).read_bytes()
    matches = lookup.similar(photo, k=40)
    assert len({match.tenant_id for match in matches}) > 1
    assert [m.similarity for m in matches] == sorted((m.similarity for m in matches), reverse=True)
    assert matches[0].product_id == product.sku


def test_the_index_after_an_export_holds_exactly_the_tables_embedded_sales(
    exported: tuple[Settings, DemoCatalog], lookup: Lookup
) -> None:
    settings = exported[0]
    rows = table_rows(settings).filter(pc.is_valid(table_rows(settings)["embedding"]))
    for tenant in {p.store_id for p in exported[1].products}:
        index = SalesIndex.load(settings.index, settings.table, tenant, lookup.model, lookup.dim)
        wanted = rows.filter(pc.equal(rows["tenant_id"], tenant))["sale_id"].to_pylist()
        assert sorted(index.sales["sale_id"].to_pylist()) == sorted(wanted)
        assert len(index) == len(wanted)


def test_a_deleted_sale_is_never_returned(
    store: tuple[DemoPaths, DemoCatalog], tmp_path: Path
) -> None:
    settings = _export(copy_of_store(store[0], tmp_path), LAST_DAY, LAST_DAY)
    rows = table_rows(settings).filter(pc.is_valid(table_rows(settings)["embedding"]))
    sale, tenant, url = (rows[name][0].as_py() for name in ("sale_id", "tenant_id", "image_url"))
    photo = (store[0].photos / url.rsplit("/", 1)[1]).read_bytes()
    lookup = Lookup(settings)
    assert sale in {m.sale_id for m in lookup.similar(photo, tenant=tenant, k=5)}

    load_table(settings.table).delete(EqualTo("sale_id", sale))

    assert sale not in {m.sale_id for m in lookup.similar(photo, tenant=tenant, k=50)}
    [report] = update_indexes(settings, tenants=[tenant])
    assert report.removed >= 1
    stored = SalesIndex.load(settings.index, settings.table, tenant, lookup.model, lookup.dim)
    assert sale not in stored.sales["sale_id"].to_pylist()


def test_a_sale_voided_at_the_source_is_no_longer_returned_after_its_day_runs_again(
    store: tuple[DemoPaths, DemoCatalog], tmp_path: Path
) -> None:
    paths = copy_of_store(store[0], tmp_path)
    settings = _export(paths, LAST_DAY, LAST_DAY)
    rows = table_rows(settings).filter(pc.is_valid(table_rows(settings)["embedding"]))
    sale, tenant, url = (rows[name][0].as_py() for name in ("sale_id", "tenant_id", "image_url"))
    photo = (store[0].photos / url.rsplit("/", 1)[1]).read_bytes()
    lookup = Lookup(settings)
    assert sale in {m.sale_id for m in lookup.similar(photo, tenant=tenant, k=5)}
    # The POS gains a `voided` column, which the source reads under the field's own name.
    with sqlite3.connect(paths.sales_db) as db:
        db.execute("ALTER TABLE sales ADD COLUMN voided INTEGER")
        db.execute("UPDATE sales SET voided = 1 WHERE id = ?", (int(sale),))

    [record] = export(settings, [LAST_DAY])

    assert (record.counts.voided, record.counts.removed) == (1, 1)
    # The run's end brought the stored index along, before any lookup asked.
    stored = SalesIndex.load(settings.index, settings.table, tenant, lookup.model, lookup.dim)
    assert sale not in stored.sales["sale_id"].to_pylist()
    assert sale not in {m.sale_id for m in Lookup(settings).similar(photo, tenant=tenant, k=50)}


def test_an_index_update_reads_only_the_files_written_since(
    store: tuple[DemoPaths, DemoCatalog], tmp_path: Path
) -> None:
    paths = copy_of_store(store[0], tmp_path)
    settings = _export(paths, FIRST_DAY, FIRST_DAY)
    before = {r.tenant: r for r in update_indexes(settings)}
    settings = _export(paths, LAST_DAY, LAST_DAY)  # the run's end updates the index
    after = {r.tenant: r for r in update_indexes(settings)}
    assert all(report.files_read == 0 for report in after.values())
    reloaded = [
        SalesIndex.load(settings.index, settings.table, tenant, report.model, report.dim)
        for tenant, report in before.items()
    ]
    assert sum(len(index) for index in reloaded) > sum(r.sales for r in before.values())


def test_an_unknown_tenant_is_refused_by_name(
    exported: tuple[Settings, DemoCatalog], lookup: Lookup, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    photo = (store[0].photos / str(_photographed(exported[1])[0].photo_name)).read_bytes()
    with pytest.raises(UnknownTenant, match="'nowhere'"):
        lookup.similar(photo, tenant="nowhere")


def test_a_photo_that_cannot_be_decoded_is_refused_by_name(lookup: Lookup) -> None:
    with pytest.raises(PhotoUnreadable, match=r"notes\.txt.*decode_failed"):
        lookup.similar(b"not a photo", location="notes.txt")


def test_a_currency_without_sales_is_refused_by_name(
    exported: tuple[Settings, DemoCatalog], lookup: Lookup, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    photo = (store[0].photos / str(_photographed(exported[1])[0].photo_name)).read_bytes()
    with pytest.raises(NoSalesInCurrency, match="'JPY'"):
        lookup.suggest_price(photo, currency="JPY")


def test_a_table_embedded_by_another_model_is_refused_not_searched(
    exported: tuple[Settings, DemoCatalog], store: tuple[DemoPaths, DemoCatalog]
) -> None:
    settings = exported[0].model_copy(deep=True)
    settings.embedder.fit = "pad"  # type: ignore[union-attr]
    photo = (store[0].photos / str(_photographed(exported[1])[0].photo_name)).read_bytes()
    with pytest.raises(IndexMismatch, match=r"embedded by .*crop.*not by the configured .*pad"):
        Lookup(settings).similar(photo)


def test_a_stored_index_of_another_model_is_refused(
    exported: tuple[Settings, DemoCatalog], lookup: Lookup
) -> None:
    settings = exported[0]
    tenant = _photographed(exported[1])[0].store_id
    folder = Path(
        settings.index.location.removeprefix("file://")
        or str(Path(settings.table.catalog["warehouse"].removeprefix("file://")).parent / "index")
    )
    [manifest] = (folder / tenant).glob("*/manifest.json")
    forged = manifest.parent.parent / "forged" / "manifest.json"
    forged.parent.mkdir()
    document = json.loads(manifest.read_text())
    forged.write_text(json.dumps({**document, "model": "another-model"}))
    with pytest.raises(IndexMismatch, match="built for model 'another-model'"):
        SalesIndex.load(settings.index, settings.table, tenant, "forged", lookup.dim)


def test_a_price_is_suggested_from_the_most_alike_sales_in_one_currency(
    exported: tuple[Settings, DemoCatalog], lookup: Lookup, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    product = _photographed(exported[1])[0]
    shot = new_shot(store[0].photos / str(product.photo_name))
    suggestion = lookup.suggest_price(shot, title=product.title, condition=product.condition)
    assert suggestion.price is not None
    assert suggestion.low is not None
    assert suggestion.high is not None
    assert suggestion.low <= suggestion.price <= suggestion.high
    assert suggestion.brand == product.brand
    assert {c.sale["currency"] for c in suggestion.comparables} == {suggestion.currency}
    assert len(suggestion.comparables) >= PricingRules().min_comparables


def test_too_few_comparable_sales_give_no_price_and_say_why() -> None:
    sale = {"currency": "EUR", "sale_price": 10, "brand": "COS", "condition": "Good"}
    suggestion = suggest([(sale, 0.95), (sale, 0.9)], PriceLevels({}, {}))
    assert suggestion.price is None
    assert suggestion.reason is not None
    assert "too few comparable sales: 2" in suggestion.reason


def test_comparables_are_moved_to_the_items_condition() -> None:
    levels = PriceLevels({"New": 1.0, "Fair": 0.5}, {})
    fair = {"currency": "EUR", "sale_price": 10, "brand": None, "condition": "Fair"}
    suggestion = suggest([(fair, 0.9)] * 3, levels, condition="New")
    assert suggestion.price == 20


def levels_of(brands: list[str], prices: list[int]) -> PriceLevels:
    """The price levels of sales of one category, in these brands at these prices."""
    return PriceLevels.from_sales(
        pa.table(
            {
                "sale_price": pa.array([Decimal(p) for p in prices], pa.decimal128(12, 2)),
                "category": ["Jeans"] * len(brands),
                "brand": brands,
                "condition": [None] * len(brands),
                "currency": ["EUR"] * len(brands),
            }
        )
    )


def test_a_brand_kept_with_spaces_is_named_by_a_title_with_no_break_spaces() -> None:
    levels = levels_of(["Dr. Martens  ", "COS"], [100, 30])
    assert levels.brand_in("\u00a0dr.\u00a0martens 1460 boots ") == "Dr. Martens"


def test_a_brand_written_with_and_without_spaces_has_one_price_level() -> None:
    levels = levels_of(
        ["Levi's", "Levi's ", "Levi's\u00a0", " Levi's", "Levi's", "COS"], [20] * 5 + [10]
    )
    assert set(levels.brands) == {"Levi's"}
    assert levels.known_brands == {"Levi's", "COS"}


def test_the_cli_prints_matches_and_writes_contact_sheets(
    exported: tuple[Settings, DemoCatalog],
    lookup: Lookup,
    store: tuple[DemoPaths, DemoCatalog],
    tmp_path: Path,
) -> None:
    product = _photographed(exported[1])[0]
    photo = tmp_path / "new.webp"
    photo.write_bytes(new_shot(store[0].photos / str(product.photo_name)))
    best = lookup.similar(photo.read_bytes(), k=1)[0]
    config = _config_of(exported[0])
    for sheet in ("sheet.html", "sheet.png"):
        result = runner.invoke(
            app, ["similar", str(photo), "-c", config, "-k", "4", "--sheet", str(tmp_path / sheet)]
        )
        assert result.exit_code == 0, result.output
        assert best.sale_id in result.output
    assert (tmp_path / "sheet.html").read_text().count("data:image/png;base64,") == 1 + 4
    with Image.open(tmp_path / "sheet.png") as image:
        assert image.width > 4 * 200


def test_the_cli_refuses_bad_input_in_one_line_with_exit_code_2(
    exported: tuple[Settings, DemoCatalog], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not a photo")
    config = _config_of(exported[0])
    for args in (
        ["similar", str(tmp_path / "notes.txt"), "-c", config],
        ["similar", str(tmp_path / "missing.jpg"), "-c", config],
        ["price", str(tmp_path / "notes.txt"), "-c", config, "--tenant", "nowhere"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert result.output.startswith("error: photo") or "tenant" in result.output


def test_run_brings_the_index_up_to_date_at_its_end(
    exported: tuple[Settings, DemoCatalog], lookup: Lookup
) -> None:
    settings = exported[0]
    table = load_table(settings.table)
    snapshot = table.current_snapshot()
    assert snapshot is not None
    tenant = _photographed(exported[1])[0].store_id
    stored = SalesIndex.load(settings.index, settings.table, tenant, lookup.model, lookup.dim)
    assert stored.snapshot_id == snapshot.snapshot_id


def test_no_index_is_kept_when_update_after_run_is_off(
    store: tuple[DemoPaths, DemoCatalog], tmp_path: Path
) -> None:
    paths = copy_of_store(store[0], tmp_path)
    settings = load_config(paths.config, index={"update_after_run": False})
    export(settings, [FIRST_DAY])
    assert not (tmp_path / "index").exists()
    assert IndexConfig().update_after_run


def _config_of(settings: Settings) -> str:
    warehouse = Path(settings.table.catalog["warehouse"].removeprefix("file://"))
    return str(warehouse.parent / "smartgo-exporter.toml")
