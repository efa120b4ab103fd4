"""The demo's building blocks: its sales database, its photos, its photo server and its config."""

from __future__ import annotations

import dataclasses
import io
import socket
import sqlite3
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from PIL import Image

from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import (
    SALE_COLUMNS,
    STORES,
    DemoCatalog,
    DemoError,
    DemoPaths,
    DemoProduct,
    PhotoState,
    build_sales_database,
    read_demo_meta,
    render_photos,
    serve_photos,
    write_demo_config,
)
from smartgo_exporter.errors import InvalidSale
from smartgo_exporter.sales import parse_sale

FIRST_DAY = date(2026, 9, 1)
BASE_URL = "http://127.0.0.1:8765"
SEED = 7


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoCatalog]:
    path = tmp_path_factory.mktemp("demo") / "sales.db"
    catalog = build_sales_database(path, photo_base_url=BASE_URL, first_day=FIRST_DAY, seed=SEED)
    return path, catalog


@pytest.fixture(scope="module")
def photos(
    tmp_path_factory: pytest.TempPathFactory, store: tuple[Path, DemoCatalog]
) -> tuple[Path, list[DemoProduct]]:
    """A few photos of each format, plus the products whose links are broken on purpose."""
    _, catalog = store
    chosen: list[DemoProduct] = []
    per_format: Counter[str] = Counter()
    for product in catalog.products:
        if product.photo is PhotoState.BROKEN:
            chosen.append(product)
        elif product.photo is PhotoState.OK and product.photo_name:
            suffix = Path(product.photo_name).suffix
            if per_format[suffix] < (8 if suffix == ".png" else 3):
                per_format[suffix] += 1
                chosen.append(product)
    folder = tmp_path_factory.mktemp("photos")
    render_photos(folder, chosen, seed=SEED)
    return folder, chosen


def _rows(path: Path, query: str = "SELECT * FROM sales ORDER BY id") -> list[sqlite3.Row]:
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def _fetch(url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


# --- the database --------------------------------------------------------------------------------


def test_the_store_has_three_tenants_in_two_currencies(store: tuple[Path, DemoCatalog]) -> None:
    path, _ = store
    tenants = _rows(path, "SELECT DISTINCT store_id, currency FROM sales WHERE currency != 'EUU'")
    assert len({row["store_id"] for row in tenants}) >= 3
    assert {row["currency"] for row in tenants} == {"GBP", "EUR"}


def test_sales_fall_on_each_of_the_thirty_days_and_no_other(
    store: tuple[Path, DemoCatalog],
) -> None:
    path, catalog = store
    days = {date.fromisoformat(row["sold_at"][:10]) for row in _rows(path)}
    assert len(days) == 30
    assert min(days) == FIRST_DAY
    assert max(days) == catalog.last_day


def test_the_store_holds_at_least_two_thousand_sales(store: tuple[Path, DemoCatalog]) -> None:
    path, catalog = store
    assert len(_rows(path)) == catalog.summary.sales >= 2_000


def test_sales_happen_within_each_stores_opening_hours(store: tuple[Path, DemoCatalog]) -> None:
    path, _ = store
    stores = {s.store_id: s for s in STORES}
    for row in _rows(path):
        shop = stores[row["store_id"]]
        sold_at = datetime.fromisoformat(row["sold_at"]).replace(tzinfo=UTC)
        local = sold_at.astimezone(ZoneInfo(shop.timezone))
        hours = shop.hours[local.weekday()]
        assert hours is not None, f"{shop.store_id} is closed on {local:%A}"
        assert hours[0] <= local.hour < hours[1]


def test_some_skus_are_sold_more_than_once_with_the_same_photo(
    store: tuple[Path, DemoCatalog],
) -> None:
    path, _ = store
    repeated = _rows(
        path,
        "SELECT store_id, sku, count(*) AS units, count(DISTINCT photo_url) AS photos"
        " FROM sales GROUP BY store_id, sku HAVING count(*) > 1",
    )
    assert len(repeated) >= 50
    assert all(row["photos"] == 1 for row in repeated)


def test_eight_photo_links_are_broken_on_purpose(
    store: tuple[Path, DemoCatalog], photos: tuple[Path, list[DemoProduct]]
) -> None:
    path, catalog = store
    folder, _ = photos
    broken = [p for p in catalog.products if p.photo is PhotoState.BROKEN]
    urls = {row["photo_url"] for row in _rows(path) if row["photo_url"]}
    assert catalog.summary.broken_links == len(broken) == 8
    for product in broken:
        assert product.photo_url(BASE_URL) in urls
        assert product.photo_name is not None
        assert not (folder / product.photo_name).exists()


def test_some_sales_have_no_photo(store: tuple[Path, DemoCatalog]) -> None:
    path, catalog = store
    missing = [row for row in _rows(path) if not row["photo_url"]]
    assert len(missing) == catalog.summary.sales_without_photo >= 5
    assert any(row["photo_url"] is None for row in missing)


def test_exactly_the_three_spoiled_rows_are_rejected_by_the_exporter(
    store: tuple[Path, DemoCatalog],
) -> None:
    path, catalog = store
    rejected: dict[str, str] = {}
    for position, row in enumerate(_rows(path)):
        raw = {field: row[column] for field, column in SALE_COLUMNS.items()}
        try:
            parse_sale(raw, position=position, naive_tz=UTC, now=datetime(2100, 1, 1, tzinfo=UTC))
        except InvalidSale as error:
            rejected[error.row] = error.field
    spoiled = {str(s.sale_id) for s in catalog.sales if s.defect is not None}
    assert catalog.summary.invalid_rows == 3
    assert set(rejected) == spoiled
    assert sorted(rejected.values()) == ["currency", "sale_price", "sale_price"]


def test_money_is_decimal_text_never_above_the_list_price(
    store: tuple[Path, DemoCatalog],
) -> None:
    path, _ = store
    priced = [row for row in _rows(path) if row["price"] and not row["price"].startswith("-")]
    assert len(priced) >= 2_000
    for row in priced:
        price, list_price = Decimal(row["price"]), Decimal(row["list_price"])
        assert row["price"] == f"{price:.2f}"
        assert Decimal(0) < price <= list_price
    assert any(Decimal(row["price"]) < Decimal(row["list_price"]) for row in priced)


def test_building_twice_with_the_same_seed_gives_identical_rows(
    store: tuple[Path, DemoCatalog], tmp_path: Path
) -> None:
    path, _ = store
    again = tmp_path / "again.db"
    build_sales_database(again, photo_base_url=BASE_URL, first_day=FIRST_DAY, seed=SEED)
    assert [tuple(row) for row in _rows(again)] == [tuple(row) for row in _rows(path)]


def test_another_seed_gives_another_store(store: tuple[Path, DemoCatalog], tmp_path: Path) -> None:
    path, _ = store
    other = tmp_path / "other.db"
    build_sales_database(other, photo_base_url=BASE_URL, first_day=FIRST_DAY, seed=SEED + 1)
    assert [tuple(row) for row in _rows(other)] != [tuple(row) for row in _rows(path)]


def test_the_database_records_which_days_it_covers(store: tuple[Path, DemoCatalog]) -> None:
    path, catalog = store
    meta = read_demo_meta(path)
    assert meta is not None
    assert (meta.first_day, meta.last_day, meta.days, meta.seed) == (
        FIRST_DAY,
        catalog.last_day,
        30,
        SEED,
    )
    assert meta.photo_base_url == BASE_URL


def test_a_file_that_is_not_a_demo_database_has_no_demo_meta(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "other.db").close()
    assert read_demo_meta(tmp_path / "other.db") is None
    assert read_demo_meta(tmp_path / "absent.db") is None


# --- the photos ----------------------------------------------------------------------------------


def test_photos_decode_as_jpeg_png_webp_and_gif(photos: tuple[Path, list[DemoProduct]]) -> None:
    folder, products = photos
    formats = set()
    for product in products:
        if product.photo is PhotoState.OK and product.photo_name:
            with Image.open(folder / product.photo_name) as image:
                image.load()
                formats.add(image.format)
                assert min(image.size) >= 400
                assert max(image.size) <= 800
    assert formats == {"JPEG", "PNG", "WEBP", "GIF"}


def test_some_png_photos_have_a_transparent_background(
    photos: tuple[Path, list[DemoProduct]],
) -> None:
    folder, products = photos
    corner_alphas = []
    for product in products:
        if product.photo is PhotoState.OK and (product.photo_name or "").endswith(".png"):
            with Image.open(folder / str(product.photo_name)) as image:
                corner_alphas.append(int(np.asarray(image.convert("RGBA"))[0, 0, 3]))
    assert 0 in corner_alphas
    assert 255 in corner_alphas


def test_rendering_twice_gives_the_same_bytes(
    photos: tuple[Path, list[DemoProduct]], tmp_path: Path
) -> None:
    folder, products = photos
    drawn = [p for p in products if p.photo is PhotoState.OK][:6]
    again = render_photos(tmp_path, drawn, seed=SEED)
    assert [path.read_bytes() for path in again] == [
        (folder / path.name).read_bytes() for path in again
    ]


def test_products_of_one_kind_and_colour_look_alike_and_other_kinds_do_not(
    store: tuple[Path, DemoCatalog], tmp_path: Path
) -> None:
    _, catalog = store
    base = next(p for p in catalog.products if p.photo is PhotoState.OK and p.style == "handbag")
    twins = [
        dataclasses.replace(base, sku=f"{base.sku}-{n}", photo_name=f"twin-{n}.jpg")
        for n in range(4)
    ]
    others = [
        dataclasses.replace(base, sku=f"{base.sku}-{n}", style=style, photo_name=f"{style}.jpg")
        for n, style in enumerate(("watch", "jeans", "sneakers", "t-shirt"))
    ]
    render_photos(
        tmp_path, [dataclasses.replace(base, photo_name="base.jpg"), *twins, *others], seed=SEED
    )

    def thumbnail(name: str | None) -> np.ndarray:
        with Image.open(tmp_path / str(name)) as image:
            return np.asarray(image.convert("L").resize((16, 16)), dtype=np.int64)

    def distance(product: DemoProduct) -> int:
        return int(np.abs(thumbnail("base.jpg") - thumbnail(product.photo_name)).sum())

    alike = sum(map(distance, twins)) / len(twins)
    unlike = sum(map(distance, others)) / len(others)
    assert alike < unlike


# --- the photo server ----------------------------------------------------------------------------


def test_the_server_serves_a_photo_byte_for_byte_with_its_content_type(
    photos: tuple[Path, list[DemoProduct]],
) -> None:
    folder, products = photos
    expected = {
        ".jpg": "image/jpeg",
        ".png": "image/png",
        ".webp": "image/webp",
        ".gif": "image/gif",
    }
    with serve_photos(folder, port=0) as base_url:
        for suffix, content_type in expected.items():
            product = next(
                p
                for p in products
                if p.photo is PhotoState.OK and (p.photo_name or "").endswith(suffix)
            )
            status, served_type, body = _fetch(str(product.photo_url(base_url)))
            assert (status, served_type) == (200, content_type)
            assert body == (folder / str(product.photo_name)).read_bytes()
            with Image.open(io.BytesIO(body)) as image:
                image.verify()


def test_the_server_answers_404_for_a_missing_photo(
    photos: tuple[Path, list[DemoProduct]],
) -> None:
    folder, products = photos
    broken = next(p for p in products if p.photo is PhotoState.BROKEN)
    (folder / "notes.txt").write_text("not a photo")
    with serve_photos(folder, port=0) as base_url:
        assert _fetch(str(broken.photo_url(base_url)))[0] == 404
        assert _fetch(f"{base_url}/photos/notes.txt")[0] == 404
        assert _fetch(f"{base_url}/sales.db")[0] == 404


def test_the_server_stops_when_the_block_ends(photos: tuple[Path, list[DemoProduct]]) -> None:
    folder, _ = photos
    with serve_photos(folder, port=0) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_taken_port_is_refused_naming_the_port(photos: tuple[Path, list[DemoProduct]]) -> None:
    folder, _ = photos
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(DemoError, match=f"port {port}"), serve_photos(folder, port=port):
            pass


# --- the config ----------------------------------------------------------------------------------


def test_the_config_loads_and_maps_onto_real_columns(
    store: tuple[Path, DemoCatalog], tmp_path: Path
) -> None:
    path, _ = store
    paths = DemoPaths(tmp_path / "demo")
    settings = load_config(write_demo_config(paths))
    columns = {row["name"] for row in _rows(path, "PRAGMA table_info(sales)")}
    assert settings.source.type == "sql"
    assert settings.source.table == "sales"
    assert set(settings.source.columns.values()) <= columns
    assert settings.source.columns == SALE_COLUMNS
    assert settings.photos.allow_hosts == [BASE_URL]
    assert settings.photos.allow_networks == []
    assert settings.progress.path == paths.progress_db.resolve()
    assert settings.table.catalog["warehouse"] == f"file://{paths.warehouse.resolve()}"


def test_the_config_allows_only_the_scheme_host_and_port_the_stores_photo_urls_name(
    tmp_path: Path,
) -> None:
    """No wider than the demo's own photo server: no other port of loopback is reachable."""
    paths = DemoPaths(tmp_path)
    build_sales_database(
        paths.sales_db,
        photo_base_url="http://127.0.0.1:9876",
        first_day=FIRST_DAY,
        days=3,
        sales=120,
    )
    settings = load_config(write_demo_config(paths))
    assert settings.photos.allow_hosts == ["http://127.0.0.1:9876"]
    assert settings.photos.allow_networks == []
