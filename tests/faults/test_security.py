"""Security: secrets never show, tenants never mix, and configuration cannot rewrite SQL.

Secrets. Each failure path runs with a known secret value where the exporter takes secrets from
(a database password, a password in the URL, an env:// or ssm:// reference, the AWS secret key,
credentials in a photo URL), and everything the run leaves behind is searched for it: the
exporter's logs at DEBUG, whatever reached stdout and stderr (file descriptors, so C libraries
too), warnings from any library, the exception's text, repr and traceback, the run records in
the progress store's files, and the table's rows and metadata files.

Tenants. An export configured for some tenants writes no other tenant's rows: the SQL source
filters them, a custom query that forgets to is filtered after it, and the pipeline drops any a
source lets through.

SQL. Table, schema and column names from the configuration must exist in the database's own
catalog, and tenant ids are bound values; a hostile value fails the run naming its key, and on
PostgreSQL and MariaDB the tables survive and nothing but the configured rows is read.
"""

from __future__ import annotations

import contextlib
import io
import logging
import secrets
import sqlite3
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url

from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import DemoCatalog, DemoPaths
from smartgo_exporter.errors import ConfigError
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunRecord, RunStatus
from smartgo_exporter.sources import SaleBatch, Source, load_source
from smartgo_exporter.windows import Window
from tests.faults.conftest import key_counts, read_table
from tests.faults.source_days import (
    DAY,
    day_of_sales,
    export_settings,
    keys_of,
    only_record,
)
from tests.servers.refused import refused_port
from tests.test_export import FIRST_DAY, settings_of

if TYPE_CHECKING:
    from tests.conftest import SalesDatabase
    from tests.servers.bedrock import FakeBedrock
    from tests.servers.moto import MotoServer


def known_secret(kind: str) -> str:
    return f"sgx-{kind}-{secrets.token_hex(12)}"


# --- everything a run leaves behind --------------------------------------------------------


class Witness:
    """Collects everything a run said or stored, to search it for secrets afterwards."""

    def __init__(
        self, capfd: pytest.CaptureFixture[str], warned: list[warnings.WarningMessage]
    ) -> None:
        self.logs = io.StringIO()
        self._capfd = capfd
        self._warned = warned
        self._said: list[tuple[str, str]] = []

    def error(self, error: BaseException) -> None:
        self._said += [
            ("the exception's text", str(error)),
            ("the exception's repr", repr(error)),
            ("the traceback", "".join(traceback.format_exception(error))),
        ]

    def records(self, records: Iterable[RunRecord]) -> None:
        for record in records:
            self._said += [
                ("a run record", repr(record)),
                ("a run record", str(record.to_document())),
            ]

    def files(self, folder: Path, pattern: str = "*") -> None:
        """Every file under `folder` matching `pattern`: progress stores (WAL included),
        catalogs, table metadata."""
        for path in sorted(folder.rglob(pattern)):
            if path.is_file():
                self._said.append((str(path), path.read_bytes().decode("latin-1")))

    def table(self, settings: Settings) -> None:
        self._said.append(("the table's rows", str(read_table(settings).to_pylist())))

    def output(self, where: str, text: str) -> None:
        self._said.append((where, text))

    def assert_nowhere(self, *secrets_: str) -> None:
        out, err = self._capfd.readouterr()
        said = [
            ("the logs", self.logs.getvalue()),
            ("stdout", out),
            ("stderr", err),
            *(("a warning", str(warning.message)) for warning in self._warned),
            *self._said,
        ]
        for secret in secrets_:
            found = [where for where, text in said if secret in text]
            assert not found, f"a secret shows in {found}"


@pytest.fixture
def witness(capfd: pytest.CaptureFixture[str]) -> Iterator[Witness]:
    """The exporter's own logging at DEBUG (as `--log-level DEBUG` sets it up) into a buffer,
    library logging (at WARNING, where the exporter leaves it) beside it, every warning, and
    capture of the process's stdout and stderr file descriptors."""
    saved = structlog.get_config()
    root = logging.getLogger()
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        watching = Witness(capfd, warned)
        handler = logging.StreamHandler(watching.logs)
        root.addHandler(handler)
        configure_logging("DEBUG", stream=watching.logs)
        try:
            yield watching
        finally:
            root.removeHandler(handler)
            structlog.configure(**saved)


# --- secrets, on every failure path ---------------------------------------------------------


@pytest.mark.parametrize("sales_db", ["mariadb"], indirect=True)
def test_a_password_the_database_refuses_shows_nowhere(
    sales_db: SalesDatabase,
    mariadb_user_with_password: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    witness: Witness,
) -> None:
    user, password = mariadb_user_with_password
    wrong = known_secret("db-password")
    monkeypatch.setenv("SGX_TEST_DB_PASSWORD", wrong)
    sales_db.insert(*day_of_sales(5))
    url = make_url(sales_db.url).set(username=user).render_as_string()
    settings = export_settings(tmp_path, url, source={"password": "env://SGX_TEST_DB_PASSWORD"})

    records = export(settings, [DAY])

    assert only_record(records).status is RunStatus.FAILED
    assert "Access denied" in records[0].message
    assert "run_failed" in witness.logs.getvalue()
    witness.records(records)
    witness.files(tmp_path)
    witness.assert_nowhere(wrong, password)


@pytest.mark.parametrize("sales_db", ["postgresql"], indirect=True)
def test_an_unreachable_database_and_progress_store_show_neither_password_nor_aws_key(
    sales_db: SalesDatabase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, witness: Witness
) -> None:
    db_password, aws_secret = known_secret("db-password"), known_secret("aws-secret")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIASGXSECURITYTEST1",
        "AWS_SECRET_ACCESS_KEY": aws_secret,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    port = refused_port()
    url = f"postgresql+psycopg://exporter:{db_password}@127.0.0.1:{port}/sales"
    settings = export_settings(
        tmp_path,
        url,
        source={"connect_timeout_seconds": 2},
        progress={
            "type": "dynamodb",
            "endpoint_url": f"http://127.0.0.1:{port}",
            "region": "eu-west-1",
        },
    )

    records = export(settings, [DAY])

    assert only_record(records).status is RunStatus.FAILED
    assert f"127.0.0.1:{port}" in records[0].message
    assert "progress_store_save_failed" in witness.logs.getvalue()
    witness.records(records)
    witness.files(tmp_path)
    witness.assert_nowhere(db_password, aws_secret)


def test_a_missing_ssm_parameter_names_the_reference_and_no_secret_beside_it(
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    witness: Witness,
) -> None:
    db_password, aws_secret = known_secret("db-password"), known_secret("aws-secret")
    # moto does not check signatures: any secret key signs a request it answers.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    present = f"/sgx/security/{secrets.token_hex(4)}/url"
    moto_server.client("ssm").put_parameter(
        Name=present,
        Value=f"postgresql+psycopg://exporter:{db_password}@127.0.0.1:1/sales",
        Type="SecureString",
    )
    missing = f"/sgx/security/{secrets.token_hex(4)}/missing"
    config = tmp_path / "smartgo-exporter.toml"
    config.write_text(
        f"""
[aws]
endpoint_urls = {{ ssm = "{moto_server.endpoint_url}" }}

[source]
type = "sql"
url = "ssm://{present}"
password = "ssm://{missing}"
table = "sales"
""",
        encoding="utf-8",
    )

    with pytest.raises(ConfigError, match=missing) as raised:
        load_config(config)
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("smartgo-exporter")), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Settings resolve in field order: the URL was read from SSM before the password failed.
    assert raised.value.key == "source.password"
    assert cli.returncode != 0
    assert missing in cli.stdout + cli.stderr
    witness.error(raised.value)
    witness.output("the command's stdout", cli.stdout)
    witness.output("the command's stderr", cli.stderr)
    witness.assert_nowhere(db_password, aws_secret)


def test_titan_refusing_the_aws_secret_key_fails_the_run_without_showing_the_key(
    workspace: DemoPaths,
    bedrock_server: FakeBedrock,
    monkeypatch: pytest.MonkeyPatch,
    witness: Witness,
) -> None:
    wrong = known_secret("aws-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    settings = settings_of(
        workspace,
        embedder={
            "type": "titan",
            "endpoint_url": bedrock_server.endpoint_url,
            "region": "us-east-1",
            "max_attempts": 1,
        },
    )

    records = export(settings, [FIRST_DAY])

    assert only_record(records).status is RunStatus.FAILED
    assert "InvalidSignatureException" in records[0].message
    assert "run_failed" in witness.logs.getvalue()
    witness.records(records)
    witness.files(workspace.root / "warehouse")
    witness.files(workspace.root, "progress.db*")
    witness.table(settings)
    witness.assert_nowhere(wrong)


def point_photos_at(sales_db: Path, photos: Path, count: int) -> list[tuple[str, str]]:
    """(sale id, photo URL) of `count` valid sales of FIRST_DAY whose photo the server has."""
    with contextlib.closing(sqlite3.connect(sales_db)) as db:
        rows = db.execute(
            "SELECT id, photo_url FROM sales WHERE sold_at LIKE ? AND photo_url IS NOT NULL"
            " AND price IS NOT NULL AND currency = 'EUR' ORDER BY id",
            (f"{FIRST_DAY}%",),
        ).fetchall()
    chosen = [(str(s), str(u)) for s, u in rows if (photos / u.rsplit("/", 1)[1]).exists()]
    assert len(chosen) >= count
    return chosen[:count]


def test_credentials_in_photo_urls_reach_neither_the_record_nor_the_table(
    workspace: DemoPaths,
    store: tuple[DemoPaths, DemoCatalog],
    witness: Witness,
) -> None:
    password, signature = known_secret("photo-password"), known_secret("photo-signature")
    (with_userinfo, plain), (signed, photo) = point_photos_at(
        workspace.sales_db, store[0].photos, 2
    )
    userinfo_url = plain.replace("http://", f"http://shop:{password}@")
    signed_url = f"{photo}?size=large&X-Amz-Credential=AKIA/x&X-Amz-Signature={signature}"
    with contextlib.closing(sqlite3.connect(workspace.sales_db)) as db, db:
        db.execute("UPDATE sales SET photo_url = ? WHERE id = ?", (userinfo_url, with_userinfo))
        db.execute("UPDATE sales SET photo_url = ? WHERE id = ?", (signed_url, signed))
    settings = settings_of(workspace)

    records = export(settings, [FIRST_DAY])

    rows = read_table(settings)
    landed = {
        row["sale_id"]: row
        for row in rows.filter(pc.is_in(rows["sale_id"], pa.array([with_userinfo, signed])))
        .select(["sale_id", "image_url", "embedding_status"])
        .to_pylist()
    }
    assert landed[with_userinfo]["embedding_status"] == "failed:userinfo_in_url"
    assert landed[with_userinfo]["image_url"] == plain
    assert landed[signed]["embedding_status"] == "ok"
    assert landed[signed]["image_url"] == f"{photo}?size=large"
    assert [e.reason for r in records for e in r.errors if e.sale_id == with_userinfo] == [
        "userinfo_in_url"
    ]
    assert "batch_committed" in witness.logs.getvalue()
    witness.records(records)
    witness.files(workspace.root / "warehouse")
    witness.files(workspace.root, "progress.db*")
    witness.table(settings)
    witness.assert_nowhere(password, signature)


# --- tenant isolation -----------------------------------------------------------------------


def tenants_in(settings: Settings) -> set[str]:
    return {tenant for tenant, _ in key_counts(read_table(settings))}


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_an_export_for_some_tenants_writes_only_their_rows(
    sales_db: SalesDatabase, tmp_path: Path
) -> None:
    rows = day_of_sales(10)
    sales_db.insert(*rows)
    settings = export_settings(tmp_path, sales_db.url, export={"tenant_ids": ["1"]})

    records = export(settings, [DAY])

    assert only_record(records).status is RunStatus.SUCCEEDED
    assert key_counts(read_table(settings)) == {key: 1 for key in keys_of(rows) if key[0] == "1"}


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_a_query_that_ignores_the_tenant_filter_still_lands_only_the_configured_tenants(
    sales_db: SalesDatabase, tmp_path: Path
) -> None:
    sales_db.insert(*day_of_sales(10))
    every_tenant = "SELECT * FROM sales WHERE sold_at >= :start AND sold_at < :end"
    settings = export_settings(
        tmp_path, sales_db.url, source={"query": every_tenant}, export={"tenant_ids": ["2"]}
    )

    export(settings, [DAY])

    assert tenants_in(settings) == {"2"}


class TenantBlindSource:
    """A source that returns every tenant whatever it is asked: what the pipeline must stop."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def read(self, window: Window, batch_size: int, tenant_ids: list[str]) -> Iterator[SaleBatch]:
        return iter(self._source.read(window, batch_size, []))

    def close(self) -> None:
        self._source.close()


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_the_pipeline_drops_other_tenants_even_from_a_source_that_ignores_the_filter(
    sales_db: SalesDatabase, tmp_path: Path
) -> None:
    sales_db.insert(*day_of_sales(10))
    settings = export_settings(tmp_path, sales_db.url, export={"tenant_ids": ["1"]})

    with contextlib.closing(TenantBlindSource(load_source(settings.source))) as source:
        export(settings, [DAY], source=source)

    assert tenants_in(settings) == {"1"}


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_another_tenants_sale_leaves_no_warning_in_the_run_even_from_a_source_that_ignores_it(
    sales_db: SalesDatabase, tmp_path: Path
) -> None:
    rows = day_of_sales(4)
    rows[1]["currency"] = "gbp"  # a sale of tenant 2, whose currency would be normalised
    sales_db.insert(*rows)
    settings = export_settings(tmp_path, sales_db.url, export={"tenant_ids": ["1"]})

    with contextlib.closing(TenantBlindSource(load_source(settings.source))) as source:
        [record] = export(settings, [DAY], source=source)

    assert (record.counts.normalised, record.errors) == (0, [])


# --- hostile names and values in the configuration -------------------------------------------

HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "table with a statement": ({"table": "sales; DROP TABLE canary"}, "source.table"),
    "table with a quote": ({"table": 'sales"; DROP TABLE canary; --'}, "source.table"),
    "table with a backtick": ({"table": "sales`; DROP TABLE canary; -- "}, "source.table"),
    "schema with a statement": ({"schema": "public; DROP TABLE canary"}, "source.schema"),
    "column closing a bracket": (
        {"columns": {"sale_id": "id) OR 1=1 --"}},
        "source.columns.sale_id",
    ),
    "column with a quote": (
        {"columns": {"tenant_id": "store_id' OR '1'='1"}},
        "source.columns.tenant_id",
    ),
}


@pytest.fixture
def canary(sales_db: SalesDatabase) -> Iterator[sa.Engine]:
    """A table the hostile values try to drop, with one row in it."""
    with sales_db.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS canary"))
        conn.execute(sa.text("CREATE TABLE canary (id INTEGER)"))
        conn.execute(sa.text("INSERT INTO canary VALUES (1)"))
    yield sales_db.engine
    with sales_db.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS canary"))


@pytest.mark.parametrize("sales_db", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_name_in_config_fails_the_run_naming_its_key_and_every_table_survives(
    sales_db: SalesDatabase, canary: sa.Engine, hostile: str, tmp_path: Path
) -> None:
    rows = day_of_sales(6)
    sales_db.insert(*rows)
    change, key = HOSTILE[hostile]
    source = dict(change)
    if "columns" in source:
        source["columns"] = {**sales_db.columns, **source["columns"]}

    records = export(export_settings(tmp_path, sales_db.url, source=source), [DAY])

    assert only_record(records).status is RunStatus.FAILED
    assert records[0].message.startswith(f"{key}:")
    assert sales_db.count() == len(rows)
    assert sales_db.count("canary") == 1
    assert read_table(export_settings(tmp_path, sales_db.url)).num_rows == 0


@pytest.mark.parametrize("sales_db", ["postgresql", "mariadb"], indirect=True)
def test_hostile_tenant_ids_are_bound_values_and_read_nothing_beyond_the_real_tenant(
    sales_db: SalesDatabase, canary: sa.Engine, tmp_path: Path
) -> None:
    rows = day_of_sales(10)
    sales_db.insert(*rows)
    hostile = ["1 OR 1=1", "1' OR '1'='1", "1); DROP TABLE canary; --", "2"]
    settings = export_settings(tmp_path, sales_db.url, export={"tenant_ids": hostile})

    records = export(settings, [DAY])

    assert only_record(records).status is RunStatus.SUCCEEDED
    assert records[0].counts.sales == sum(row["store_id"] == 2 for row in rows)
    assert tenants_in(settings) == {"2"}
    assert sales_db.count("canary") == 1
