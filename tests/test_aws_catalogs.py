"""The AWS catalogs, against real servers: S3 Tables (its Iceberg REST endpoint with SigV4) on a
local SeaweedFS, and Glue on moto.

The S3 Tables configuration is production's, `type = "s3tables"` with the table bucket's ARN as
warehouse and the region, signed with the signing name `s3tables`; only the two endpoints (the
catalog's `uri` and the Parquet files' `s3.endpoint`) point at the local server instead of AWS.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import SecretStr
from pyiceberg.schema import Schema
from structlog.testing import capture_logs
from typer.testing import CliRunner

from smartgo_exporter.cli import app
from smartgo_exporter.config import IndexConfig, Settings, TableConfig
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import SALE_COLUMNS, DemoCatalog, DemoPaths
from smartgo_exporter.errors import ConfigError, SinkError
from smartgo_exporter.lookup import Lookup, update_indexes
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunStatus
from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import (
    ICEBERG_SCHEMA,
    Embedding,
    EmbeddingStatus,
    SaleRow,
    rows_to_arrow,
)
from smartgo_exporter.sinks.catalog import catalog_properties, open_catalog
from smartgo_exporter.sinks.iceberg import SalesTable, create_table
from tests.demo_store import serve_demo_store
from tests.servers.moto import MotoServer
from tests.servers.seaweedfs import Seaweed

DAY = date(2026, 10, 5)
OCTOBER_2026 = 681
"""Iceberg's month transform: months since 1970-01."""


def namespace() -> str:
    """A namespace of the test's own: the server lasts the session."""
    return f"pricing_intelligence_{secrets.token_hex(4)}"


def s3tables_catalog(seaweedfs: Seaweed) -> dict[str, str]:
    """Production's `[table.catalog]`, with the local endpoints as the only difference."""
    return {
        "type": "s3tables",
        "warehouse": seaweedfs.warehouse,
        "region": seaweedfs.region,
        "uri": seaweedfs.iceberg_endpoint,
        "s3.endpoint": seaweedfs.s3_endpoint,
    }


@pytest.fixture
def aws(seaweedfs: Seaweed, monkeypatch: pytest.MonkeyPatch) -> Seaweed:
    """The server, with its credentials in the default chain for this test."""
    seaweedfs.use_credentials(monkeypatch)
    return seaweedfs


@pytest.fixture
def table_config(aws: Seaweed) -> TableConfig:
    return TableConfig(catalog=s3tables_catalog(aws), namespace=namespace())


# --- a day exported end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoPaths, DemoCatalog]]:
    """A small demo store (two days, ~80 sales) whose photo server runs for the module."""
    folder = tmp_path_factory.mktemp("store")
    with serve_demo_store(folder, first_day=DAY, days=2, sales=80) as served:
        yield served


def write_config(folder: Path, sales_db: Path, seaweedfs: Seaweed) -> Path:
    """The config a deployment would have, but for the two endpoints and a local source."""
    columns = "\n".join(f'{field} = "{column}"' for field, column in SALE_COLUMNS.items())
    config = folder / "smartgo-exporter.toml"
    config.write_text(
        f"""
[source]
type = "sql"
url = "sqlite:///{sales_db}"
table = "sales"

[source.columns]
{columns}

[photos]
allow_networks = ["127.0.0.1/32"]

[table]
namespace = "{namespace()}"

[table.catalog]
type = "s3tables"
warehouse = "{seaweedfs.warehouse}"
region = "{seaweedfs.region}"
uri = "{seaweedfs.iceberg_endpoint}"
"s3.endpoint" = "{seaweedfs.s3_endpoint}"

[progress]
type = "sqlite"
path = "progress.db"
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture(scope="module")
def exported(
    store: tuple[DemoPaths, DemoCatalog],
    seaweedfs: Seaweed,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """Settings whose table holds the store's day, exported once through S3 Tables."""
    folder = tmp_path_factory.mktemp("exported")
    with pytest.MonkeyPatch.context() as monkeypatch:
        seaweedfs.use_credentials(monkeypatch)
        settings = load_config(write_config(folder, store[0].sales_db, seaweedfs))
        records = export(settings, [DAY])
    assert [r.status for r in records] in ([RunStatus.SUCCEEDED], [RunStatus.PARTIAL])
    return settings


def valid_sales(catalog: DemoCatalog) -> list[str]:
    """The ids of DAY's sales that can be exported (the demo's sold_at is naive UTC)."""
    return [str(s.sale_id) for s in catalog.sales if s.defect is None and s.sold_at.date() == DAY]


def test_a_day_exported_through_s3_tables_reads_back_partitioned(
    exported: Settings, store: tuple[DemoPaths, DemoCatalog], aws: Seaweed
) -> None:
    table = SalesTable.open(exported.table, source="smartgo", create=False).table
    rows = table.scan().to_arrow()
    assert sorted(rows["sale_id"].to_pylist()) == sorted(valid_sales(store[1]))
    files = [task.file for task in table.scan().plan_files()]
    partitions = {(file.partition[0], file.partition[1]) for file in files}
    tenants = set(rows["tenant_id"].to_pylist())
    assert partitions == {(tenant, OCTOBER_2026) for tenant in tenants}
    assert pc.count(rows["embedding"]).as_py() > 0


def test_the_data_files_are_parquet_objects_in_the_table_bucket(
    exported: Settings, aws: Seaweed
) -> None:
    table = SalesTable.open(exported.table, source="smartgo", create=False).table
    paths = [task.file.file_path for task in table.scan().plan_files()]
    assert paths
    assert all(path.startswith(f"s3://{aws.table_bucket}/") for path in paths)
    bucket, key = paths[0].removeprefix("s3://").split("/", 1)
    parquet = aws.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert parquet[:4] == b"PAR1"
    assert parquet[-4:] == b"PAR1"


def test_a_rerun_through_s3_tables_keeps_one_row_per_sale(
    exported: Settings, store: tuple[DemoPaths, DemoCatalog], aws: Seaweed, tmp_path: Path
) -> None:
    sale_ids = valid_sales(store[1])
    assert sum(r.counts.written for r in export(exported, [DAY])) == 0
    # Every sale changed at the source: the rerun replaces each row through the upsert.
    changed_db = tmp_path / "sales.db"
    shutil.copy(store[0].sales_db, changed_db)
    with contextlib.closing(sqlite3.connect(changed_db)) as db, db:
        db.executemany("UPDATE sales SET price = '1.23' WHERE id = ?", [(i,) for i in sale_ids])
    changed = exported.model_copy(deep=True)
    changed.source.url = SecretStr(f"sqlite:///{changed_db}")
    records = export(changed, [DAY])
    assert sum(r.counts.written for r in records) == len(sale_ids)
    rows = SalesTable.open(changed.table, source="smartgo", create=False).table.scan().to_arrow()
    assert sorted(rows["sale_id"].to_pylist()) == sorted(sale_ids)
    assert set(rows["sale_price"].to_pylist()) == {Decimal("1.23")}


def test_the_index_is_kept_in_s3_and_answers_from_an_s3_tables_table(
    exported: Settings, store: tuple[DemoPaths, DemoCatalog], aws: Seaweed
) -> None:
    bucket = f"smartgo-index-{secrets.token_hex(4)}"
    aws.s3_client().create_bucket(Bucket=bucket)
    settings = exported.model_copy(update={"index": IndexConfig(location=f"s3://{bucket}/index")})
    rows = SalesTable.open(settings.table, source="smartgo", create=False).table.scan().to_arrow()
    embedded = rows.filter(pc.is_valid(rows["embedding"]))

    reports = update_indexes(settings)

    assert sum(report.sales for report in reports) == embedded.num_rows
    keys = [o["Key"] for o in aws.s3_client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sum(key.endswith("/manifest.json") for key in keys) == len(reports)
    sale = embedded.slice(0, 1).to_pylist()[0]
    photo = (store[0].photos / sale["image_url"].rsplit("/", 1)[1]).read_bytes()
    matches = Lookup(settings).similar(photo, tenant=sale["tenant_id"], k=5)
    assert sale["sale_id"] in [match.sale_id for match in matches]


# --- credentials, creation, evolution, conflicts ---------------------------------------------


def test_the_local_server_refuses_unsigned_requests(seaweedfs: Seaweed) -> None:
    """What makes the wrong-secret test mean something: nothing gets in without a signature."""
    for url in (
        f"{seaweedfs.iceberg_endpoint}/v1/{seaweedfs.table_bucket}/namespaces",
        f"{seaweedfs.s3_endpoint}/{seaweedfs.table_bucket}/",
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 403


def test_a_wrong_secret_fails_clearly_and_shows_no_secret(
    seaweedfs: Seaweed, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = secrets.token_urlsafe(24)
    seaweedfs.use_credentials(monkeypatch, secret_key=wrong)
    config = TableConfig(catalog=s3tables_catalog(seaweedfs), namespace=namespace())
    with pytest.raises(SinkError, match="signature") as refused:
        SalesTable.open(config, source="smartgo")
    assert wrong not in str(refused.value)
    assert seaweedfs.secret_key not in str(refused.value)


def test_create_table_makes_the_namespace_and_the_partitioned_table(
    table_config: TableConfig,
) -> None:
    table = create_table(table_config)
    catalog = open_catalog(table_config)
    assert (table_config.namespace,) in catalog.list_namespaces()
    assert catalog.table_exists((table_config.namespace, table_config.name))
    spec = [(f.name, str(f.transform)) for f in table.spec().fields]
    assert spec == [("tenant_id", "identity"), ("sold_at_month", "month")]
    assert table.schema().column_names == ICEBERG_SCHEMA.column_names
    assert create_table(table_config).metadata.table_uuid == table.metadata.table_uuid


def test_the_create_table_command_prints_the_table(
    aws: Seaweed, store: tuple[DemoPaths, DemoCatalog], tmp_path: Path
) -> None:
    config = write_config(tmp_path, store[0].sales_db, aws)
    result = CliRunner().invoke(app, ["create-table", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"at s3://{aws.table_bucket}/" in result.output
    assert "partitioned by identity(tenant_id), month(sold_at)" in result.output
    assert "embedding_status" in result.output


def sale_rows(count: int, run_id: str, first: int = 0) -> pa.Table:
    vector = np.full(8, 1 / np.sqrt(8), dtype=np.float32)
    sold_at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    rows = [
        SaleRow(
            Sale(
                sale_id=str(n),
                tenant_id="store-a",
                product_id=f"SKU-{n}",
                sold_at=sold_at + timedelta(minutes=n),
                sale_price=Decimal("10.00"),
                currency="EUR",
            ),
            EmbeddingStatus.OK,
            Embedding(vector, "model-a", "00" * 32, 64, 64),
        )
        for n in range(first, first + count)
    ]
    return rows_to_arrow(rows, source="smartgo", run_id=run_id, exported_at=sold_at)


def test_an_older_rest_table_gains_a_nullable_column_without_rewriting_data(
    table_config: TableConfig,
) -> None:
    catalog = open_catalog(table_config)
    catalog.create_namespace(table_config.namespace)
    older = Schema(*[f for f in ICEBERG_SCHEMA.fields if f.name != "source_updated_at"])
    table = catalog.create_table((table_config.namespace, table_config.name), schema=older)
    table.append(sale_rows(5, "old").drop_columns(["source_updated_at"]))
    files_before = {task.file.file_path for task in table.scan().plan_files()}

    evolved = create_table(table_config)

    assert evolved.schema().find_field("source_updated_at").required is False
    assert {task.file.file_path for task in evolved.scan().plan_files()} == files_before
    rows = evolved.scan().to_arrow()
    assert rows.num_rows == 5
    assert rows["source_updated_at"].null_count == 5


def test_a_commit_that_loses_a_race_on_rest_is_retried_against_the_new_state(
    table_config: TableConfig, caplog: pytest.LogCaptureFixture
) -> None:
    ours = SalesTable.open(table_config, source="smartgo")
    theirs = SalesTable.open(table_config, source="smartgo")
    ours.upsert(sale_rows(1, "run-0"), run_id="run-0")
    theirs.table.refresh()
    theirs.upsert(sale_rows(29, "theirs", first=1), run_id="theirs")
    # `ours` still holds the metadata from before their commit: the catalog answers 409, which
    # pyiceberg reports and retries; its retry then finds their rows on our keys, and only
    # re-planning the batch (which files to rewrite) can go on from there.
    with capture_logs() as logs:
        ours.upsert(sale_rows(20, "ours", first=20), run_id="ours")
    assert "Commit failed due to a concurrent update" in caplog.text
    conflicts = [entry for entry in logs if entry["event"] == "commit_conflict"]
    assert len(conflicts) == 1
    ours.table.refresh()
    ids = ours.table.scan().to_arrow()["sale_id"].to_pylist()
    assert sorted(map(int, ids)) == list(range(40))


# --- the properties each catalog type is opened with -------------------------------------------


def test_s3tables_expands_to_the_aws_rest_endpoint_with_sigv4() -> None:
    arn = "arn:aws:s3tables:eu-west-1:111122223333:bucket/pricing"
    config = TableConfig(catalog={"type": "s3tables", "warehouse": arn})
    assert catalog_properties(config) == {
        "type": "rest",
        "warehouse": arn,
        "uri": "https://s3tables.eu-west-1.amazonaws.com/iceberg",
        "rest.sigv4-enabled": "true",
        "rest.signing-name": "s3tables",
        "rest.signing-region": "eu-west-1",
        "s3.region": "eu-west-1",
    }


@pytest.mark.parametrize(
    ("catalog", "key"),
    [
        ({"type": "hive", "uri": "thrift://metastore:9083"}, "table.catalog.type"),
        ({"uri": "sqlite:///catalog.db"}, "table.catalog.type"),
        ({"type": "s3tables", "warehouse": "s3://pricing"}, "table.catalog.warehouse"),
        (
            {
                "type": "s3tables",
                "warehouse": "arn:aws:s3tables:eu-west-1:111122223333:bucket/pricing",
                "region": "us-east-1",
            },
            "table.catalog.region",
        ),
    ],
)
def test_a_catalog_that_cannot_work_is_a_config_error(catalog: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_catalog(TableConfig(catalog=catalog))
    assert raised.value.key == key


def test_the_glue_catalog_creates_the_table_in_glue(moto_server: MotoServer) -> None:
    bucket = f"sgx-glue-{secrets.token_hex(4)}"
    moto_server.client("s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": moto_server.region}
    )
    config = TableConfig(
        catalog={
            "type": "glue",
            "region": moto_server.region,
            "glue.endpoint": moto_server.endpoint_url,
            "s3.endpoint": moto_server.endpoint_url,
            "warehouse": f"s3://{bucket}/warehouse",
        },
        namespace=namespace(),
    )
    table = SalesTable.open(config, source="smartgo")
    table.upsert(sale_rows(3, "run-1"), run_id="run-1")
    databases = moto_server.client("glue").get_databases()["DatabaseList"]
    assert config.namespace in {database["Name"] for database in databases}
    reloaded = SalesTable.open(config, source="smartgo", create=False)
    assert reloaded.table.scan().to_arrow().num_rows == 3
