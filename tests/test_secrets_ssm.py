"""Secrets from SSM Parameter Store, against a real moto server: `ssm://` references, and the SQL
source's `config_parameter`, a SecureString JSON document that becomes the source's URL.
"""

from __future__ import annotations

import json
import secrets
from datetime import date
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from smartgo_exporter.config import Settings, SqlSourceConfig
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.errors import ConfigError, SecretError
from smartgo_exporter.sources import load_source
from smartgo_exporter.windows import business_day
from tests.servers.moto import MotoServer

PASSWORD = "pw-Zq8'@/:%?#-" + secrets.token_hex(8)
"""A password full of characters that would break a URL it were written into."""

DATABASE_CONFIG = {
    "engine": "postgres",
    "host": "smartgo-db.internal",
    "port": 5432,
    "database": "smartgo",
    "username": "export@smartgo",
    "password": PASSWORD,
}

EMPTY_WINDOW_QUERY = (
    "SELECT 'S-1' AS sale_id, 'store' AS tenant_id, 'SKU-1' AS product_id, NOW() AS sold_at,"
    " 1.00 AS sale_price, 'EUR' AS currency FROM DUAL WHERE :start > :end"
)
"""Every sale field a query must return, and never a row: a login and a query, nothing else."""


def parameter_path() -> str:
    """A fresh parameter folder: the moto server is shared by the whole session."""
    return f"/sgx-test/{secrets.token_hex(4)}"


def put(moto_server: MotoServer, name: str, value: str) -> None:
    moto_server.client("ssm").put_parameter(Name=name, Value=value, Type="SecureString")


def settings_with(moto_server: MotoServer, source: dict[str, Any], **aws: Any) -> Settings:
    """Settings whose SSM client is pointed at moto through `aws.endpoint_urls`."""
    return load_config(
        source={"type": "sql", "table": "sales", **source},
        aws={"region": moto_server.region, "endpoint_urls": {"ssm": moto_server.endpoint_url}}
        | aws,
    )


def sql_source(settings: Settings) -> SqlSourceConfig:
    assert isinstance(settings.source, SqlSourceConfig)
    return settings.source


def with_parameter(moto_server: MotoServer, document: str) -> Settings:
    name = f"{parameter_path()}/smartgo/database/config"
    put(moto_server, name, document)
    return settings_with(moto_server, {"config_parameter": name})


def test_an_ssm_reference_resolves_to_the_decrypted_secure_string(
    moto_server: MotoServer,
) -> None:
    name = f"{parameter_path()}/db-password"
    put(moto_server, name, PASSWORD)
    settings = settings_with(
        moto_server,
        {"url": "postgresql+psycopg://exporter@db/smartgo", "password": f"ssm://{name}"},
    )
    password = sql_source(settings).password
    assert password is not None
    assert password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(settings)


def test_a_missing_parameter_is_named_in_the_error(moto_server: MotoServer) -> None:
    name = f"{parameter_path()}/not-there"
    with pytest.raises(SecretError) as raised:
        settings_with(moto_server, {"url": "sqlite:///s.db", "password": f"ssm://{name}"})
    assert raised.value.key == "source.password"
    assert name in str(raised.value)
    assert "not found" in str(raised.value)


def test_the_config_parameter_becomes_the_source_url_and_password(
    moto_server: MotoServer,
) -> None:
    folder = parameter_path()
    put(moto_server, f"{folder}/prod/smartgo/database/config", json.dumps(DATABASE_CONFIG))
    settings = settings_with(
        moto_server,
        {"config_parameter": f"{folder}/{{stage}}/smartgo/database/config"},
        stage="prod",
    )
    source = sql_source(settings)
    assert source.password is not None
    assert source.password.get_secret_value() == PASSWORD
    url = make_url(source.url.get_secret_value())
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password) == ("export@smartgo", None)
    assert (url.host, url.port, url.database) == ("smartgo-db.internal", 5432, "smartgo")
    assert "export%40smartgo@smartgo-db.internal" in source.url.get_secret_value()


@pytest.mark.parametrize(
    ("engine", "driver"),
    [
        ("postgresql", "postgresql+psycopg"),
        ("mysql", "mysql+pymysql"),
        ("MariaDB", "mysql+pymysql"),
    ],
)
def test_each_engine_gets_its_driver(moto_server: MotoServer, engine: str, driver: str) -> None:
    settings = with_parameter(moto_server, json.dumps(DATABASE_CONFIG | {"engine": engine}))
    assert make_url(sql_source(settings).url.get_secret_value()).drivername == driver


def test_the_url_from_the_parameter_logs_in_to_mariadb(
    moto_server: MotoServer, mariadb_database: str, mariadb_user_with_password: tuple[str, str]
) -> None:
    user, password = mariadb_user_with_password
    server = make_url(mariadb_database)
    document = {
        "engine": "mariadb",
        "host": server.host,
        "port": str(server.port),
        "database": server.database,
        "username": user,
        "password": password,
    }
    name = f"{parameter_path()}/database/config"
    put(moto_server, name, json.dumps(document))
    settings = settings_with(
        moto_server,
        {
            "config_parameter": name,
            "table": None,
            "query": EMPTY_WINDOW_QUERY,
        },
    )
    source = load_source(settings.source)
    try:
        assert list(source.read(business_day(date(2026, 11, 2), "UTC"), 10, [])) == []
    finally:
        source.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("engine", None),
        ("engine", "oracle"),
        ("host", None),
        ("host", ""),
        ("port", None),
        ("port", "five-four-three-two"),
        ("port", 70000),
        ("port", True),
        ("database", None),
        ("database", ["smartgo"]),
        ("username", None),
        ("password", None),
        ("password", 1234),
    ],
)
def test_a_missing_or_wrong_field_is_named_and_no_value_is_shown(
    moto_server: MotoServer, field: str, value: object
) -> None:
    document = dict(DATABASE_CONFIG)
    if value is None:
        del document[field]
    else:
        document[field] = value
    with pytest.raises(ConfigError) as raised:
        with_parameter(moto_server, json.dumps(document))
    assert raised.value.key == f"source.config_parameter.{field}"
    message = str(raised.value)
    assert PASSWORD not in message
    if value not in (None, ""):
        assert str(value) not in message.removeprefix(raised.value.key)


def test_a_parameter_that_is_not_json_shows_no_part_of_it(moto_server: MotoServer) -> None:
    document = json.dumps(DATABASE_CONFIG)[:-9]
    with pytest.raises(ConfigError, match="not valid JSON") as raised:
        with_parameter(moto_server, document)
    assert raised.value.key == "source.config_parameter"
    assert PASSWORD[:8] not in str(raised.value)


def test_url_and_config_parameter_are_exclusive() -> None:
    for source in (
        {"url": "sqlite:///s.db", "config_parameter": "/tf/dev/smartgo/database/config"},
        {},
    ):
        with pytest.raises(ConfigError, match="exactly one of `url` or `config_parameter`"):
            load_config(source={"type": "sql", "table": "sales", **source})
